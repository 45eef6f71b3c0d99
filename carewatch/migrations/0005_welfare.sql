-- Beyond emergencies: service requests and their work orders, welfare visits (welfare package).

-- Provider organisations (meal services, cleaners, care agencies). Their workers act through
-- operator-role accounts; the order records the worker's name (no 'provider' role).
CREATE TABLE provider_orgs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    district         text NOT NULL DEFAULT '',
    active           boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- A non-emergency request: from a device 'service' event or taken by an operator on the phone.
CREATE TABLE service_requests (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resident_id      bigint NOT NULL REFERENCES residents (id),
    category         text NOT NULL CHECK (category IN ('meal_delivery', 'cleaning', 'bathing',
                        'hospital_escort', 'repairs', 'shopping', 'chat', 'other')),
    source           text NOT NULL CHECK (source IN ('device', 'phone')),
    status           text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'assigned', 'done', 'cancelled')),
    wanted_at        timestamptz NOT NULL,
    notes            text NOT NULL DEFAULT '',
    device_id        text,
    event_ts         timestamptz,
    event_seq        bigint,
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       bigint REFERENCES users (id),
    -- a redelivered device event opens nothing twice
    UNIQUE (device_id, event_ts, event_seq)
);
CREATE INDEX service_requests_open ON service_requests (wanted_at) WHERE status IN ('open', 'assigned');
CREATE INDEX service_requests_resident ON service_requests (resident_id, created_at DESC);

CREATE TABLE work_orders (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id       bigint NOT NULL REFERENCES service_requests (id),
    org_id           bigint NOT NULL REFERENCES provider_orgs (id),
    status           text NOT NULL DEFAULT 'assigned' CHECK (status IN ('assigned', 'accepted', 'declined',
                        'worker_assigned', 'checked_in', 'completed', 'cancelled')),
    worker_name      text NOT NULL DEFAULT '',
    assigned_at      timestamptz NOT NULL,
    assigned_by      bigint REFERENCES users (id),
    accepted_at      timestamptz,
    checked_in_at    timestamptz,
    checked_out_at   timestamptz,
    closed_at        timestamptz,
    rating           smallint CHECK (rating BETWEEN 1 AND 5),
    rating_comment   text,
    rated_at         timestamptz,
    rated_by         bigint REFERENCES users (id),
    version          int NOT NULL DEFAULT 0
);
-- One live order per request: reassigning needs the current one declined or cancelled first.
CREATE UNIQUE INDEX work_orders_one_live ON work_orders (request_id)
    WHERE status NOT IN ('declined', 'cancelled');
CREATE INDEX work_orders_org ON work_orders (org_id, assigned_at);

-- Append-only audit of every request and order change.
CREATE TABLE work_order_log (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id       bigint NOT NULL REFERENCES service_requests (id),
    order_id         bigint REFERENCES work_orders (id),
    at               timestamptz NOT NULL,
    actor_id         bigint REFERENCES users (id),
    actor            text NOT NULL,
    action           text NOT NULL,
    from_status      text,
    to_status        text,
    note             text,
    detail           jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX work_order_log_request ON work_order_log (request_id, id);
CREATE TRIGGER work_order_log_append_only BEFORE UPDATE OR DELETE ON work_order_log
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

-- Welfare visits: scheduled from the resident's tier, or unscheduled from a welfare alert.
CREATE TABLE welfare_visits (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resident_id      bigint NOT NULL REFERENCES residents (id),
    kind             text NOT NULL CHECK (kind IN ('scheduled', 'unscheduled')),
    tier             text NOT NULL CHECK (tier IN ('weekly', 'monthly')),
    status           text NOT NULL DEFAULT 'due' CHECK (status IN ('due', 'done', 'cancelled')),
    due_at           timestamptz NOT NULL,
    visited_at       timestamptz,
    worker           text,
    findings         text,
    follow_ups       text,
    alert_id         bigint REFERENCES alerts (id),
    created_at       timestamptz NOT NULL,
    created_by       bigint REFERENCES users (id),
    recorded_by      bigint REFERENCES users (id)
);
-- At most one pending scheduled visit per resident, and one unscheduled visit per alert.
CREATE UNIQUE INDEX welfare_visits_one_due ON welfare_visits (resident_id)
    WHERE status = 'due' AND kind = 'scheduled';
CREATE UNIQUE INDEX welfare_visits_alert ON welfare_visits (alert_id) WHERE alert_id IS NOT NULL;
CREATE INDEX welfare_visits_due ON welfare_visits (due_at) WHERE status = 'due';
CREATE INDEX welfare_visits_resident ON welfare_visits (resident_id, visited_at DESC);
