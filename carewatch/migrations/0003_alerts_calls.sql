-- Alerts (what the engine concluded) and calls (what the hotline does about it).

CREATE TABLE calls (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resident_id        bigint NOT NULL REFERENCES residents (id),
    priority           smallint NOT NULL CHECK (priority BETWEEN 1 AND 4),
    status             text NOT NULL DEFAULT 'queued'
                       CHECK (status IN ('queued', 'claimed', 'in_progress', 'resolved')),
    title              text NOT NULL,
    reason             text NOT NULL,                -- rule that opened it, e.g. 'fall'
    event_at           timestamptz NOT NULL,         -- device event time of the trigger
    late               boolean NOT NULL DEFAULT false,
    cancelled_by_wearer boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    target_at          timestamptz NOT NULL,         -- answer-by time for its priority
    claimed_by         bigint REFERENCES users (id),
    claimed_at         timestamptz,
    first_claimed_at   timestamptz,
    first_claimed_by   bigint REFERENCES users (id),
    last_action_at     timestamptz,
    resolved_at        timestamptz,
    resolved_by        bigint REFERENCES users (id),
    outcome            text,
    escalation_level   int NOT NULL DEFAULT 0,
    escalated_at       timestamptz,
    next_escalation_at timestamptz,
    version            int NOT NULL DEFAULT 0
);
-- One open call per resident: new alerts attach to it; this is what makes "never two calls" hold
-- under concurrent engine workers and redelivery.
CREATE UNIQUE INDEX calls_one_open_per_resident ON calls (resident_id) WHERE status <> 'resolved';
CREATE INDEX calls_queue ON calls (priority, created_at) WHERE status <> 'resolved';
CREATE INDEX calls_resident ON calls (resident_id, created_at DESC);
CREATE INDEX calls_created ON calls (created_at);

-- Append-only audit of every change to a call.
CREATE TABLE call_log (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id            bigint NOT NULL REFERENCES calls (id),
    at                 timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_id           bigint REFERENCES users (id),
    actor              text NOT NULL,                -- username, or 'system:alerts' / 'system:escalation'
    action             text NOT NULL,                -- created, attached, claimed, released, note, ...
    from_status        text,
    to_status          text,
    note               text,
    internal           boolean NOT NULL DEFAULT false, -- operators' notes: never shown to family
    detail             jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX call_log_call ON call_log (call_id, id);

CREATE FUNCTION forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END $$;
CREATE TRIGGER call_log_append_only BEFORE UPDATE OR DELETE ON call_log
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

CREATE TABLE contact_attempts (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id            bigint NOT NULL REFERENCES calls (id),
    contact_id         bigint NOT NULL REFERENCES contacts (id),
    at                 timestamptz NOT NULL DEFAULT now(),
    result             text NOT NULL CHECK (result IN ('reached', 'no_answer', 'declined', 'busy')),
    by_user            bigint REFERENCES users (id),
    note               text
);
CREATE INDEX contact_attempts_call ON contact_attempts (call_id);

CREATE TABLE dispatches (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id            bigint NOT NULL REFERENCES calls (id),
    responder_kind     text NOT NULL
                       CHECK (responder_kind IN ('ambulance', 'care_worker', 'family', 'property_manager',
                                                 'police', 'other')),
    responder_name     text NOT NULL DEFAULT '',
    sent_at            timestamptz NOT NULL DEFAULT now(),
    sent_by            bigint REFERENCES users (id),
    arrived_at         timestamptz,
    handover           text CHECK (handover IN ('hospital', 'family', 'resolved_at_home', 'other')),
    handover_at        timestamptz,
    note               text
);
CREATE INDEX dispatches_call ON dispatches (call_id);

CREATE TABLE notifications (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id            bigint NOT NULL REFERENCES calls (id),
    recipient          text NOT NULL,                -- 'contact:<id>' or 'user:<id>'
    channel            text NOT NULL DEFAULT 'webhook',
    state              text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts           int NOT NULL DEFAULT 0,
    last_error         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    sent_at            timestamptz,
    UNIQUE (call_id, recipient)
);
CREATE INDEX notifications_pending ON notifications (created_at) WHERE state = 'pending';

CREATE TABLE alerts (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resident_id        bigint NOT NULL REFERENCES residents (id),
    device_id          text,
    rule               text NOT NULL,
    priority           smallint NOT NULL CHECK (priority BETWEEN 1 AND 4),
    status             text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'cleared', 'closed')),
    opened_at          timestamptz NOT NULL,         -- event time
    raised_at          timestamptz NOT NULL DEFAULT now(),
    last_seen_at       timestamptz NOT NULL,
    cleared_at         timestamptz,
    count              int NOT NULL DEFAULT 1,
    late               boolean NOT NULL DEFAULT false,
    title              text NOT NULL DEFAULT '',
    details            jsonb NOT NULL DEFAULT '{}'::jsonb,
    call_id            bigint REFERENCES calls (id)
);
-- One open alert per (resident, rule), enforced here and not only in code.
CREATE UNIQUE INDEX alerts_one_open ON alerts (resident_id, rule) WHERE status = 'open';
CREATE INDEX alerts_resident ON alerts (resident_id, opened_at DESC);
CREATE INDEX alerts_call ON alerts (call_id);

CREATE TABLE alert_log (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id           bigint NOT NULL REFERENCES alerts (id),
    at                 timestamptz NOT NULL DEFAULT clock_timestamp(),
    from_status        text,
    to_status          text NOT NULL,
    reason             text NOT NULL DEFAULT ''
);
CREATE TRIGGER alert_log_append_only BEFORE UPDATE OR DELETE ON alert_log
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

-- Durable rule state per resident: survives restarts, shared by every engine worker (row locks).
CREATE TABLE engine_state (
    resident_id        bigint PRIMARY KEY REFERENCES residents (id),
    state              jsonb NOT NULL DEFAULT '{}'::jsonb,
    next_due_at        timestamptz,                  -- earliest timer deadline, wall clock
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX engine_state_due ON engine_state (next_due_at) WHERE next_due_at IS NOT NULL;

-- Events the engine has already acted on: a redelivered fall is recognised and ignored.
CREATE TABLE engine_seen (
    device_id          text NOT NULL,
    ts                 timestamptz NOT NULL,
    seq                bigint NOT NULL,
    seen_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, ts, seq)
);

-- The live feed: every queue change, in commit order, resumable by id (SSE Last-Event-ID).
CREATE TABLE live_events (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at                 timestamptz NOT NULL DEFAULT now(),
    kind               text NOT NULL,                -- call.created, call.updated, call.escalated, ...
    call_id            bigint,
    resident_id        bigint,
    payload            jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX live_events_resident ON live_events (resident_id, id);

CREATE FUNCTION live_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('carewatch_live', NEW.id::text);
    RETURN NEW;
END $$;
CREATE TRIGGER live_events_notify AFTER INSERT ON live_events
    FOR EACH ROW EXECUTE FUNCTION live_events_notify();
