-- Registry: who is cared for, which devices watch them, who may see what.

CREATE TABLE residents (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    date_of_birth    date,
    address          text NOT NULL DEFAULT '',
    district         text NOT NULL DEFAULT '',
    timezone         text NOT NULL DEFAULT 'Asia/Shanghai',
    home_lat         double precision CHECK (home_lat BETWEEN -90 AND 90),
    home_lon         double precision CHECK (home_lon BETWEEN -180 AND 180),
    geofence_m       double precision NOT NULL DEFAULT 200 CHECK (geofence_m > 0),
    lives_alone      boolean NOT NULL DEFAULT false,
    dementia         boolean NOT NULL DEFAULT false,
    -- conditions, medication, mobility, language: shown to operators handling a call
    care_notes       jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- per-resident overrides of rule thresholds (alerts.rules.Thresholds field names)
    thresholds       jsonb NOT NULL DEFAULT '{}'::jsonb,
    active           boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- Key-safe and door codes live apart so that no ordinary query ever selects them.
CREATE TABLE resident_access (
    resident_id      bigint PRIMARY KEY REFERENCES residents (id),
    access_notes     text NOT NULL DEFAULT '',
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE contacts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resident_id      bigint NOT NULL REFERENCES residents (id),
    position         int NOT NULL DEFAULT 0,
    name             text NOT NULL,
    relation         text NOT NULL DEFAULT '',
    phone            text NOT NULL DEFAULT '',
    -- family, neighbour, key_holder, care_team, property_manager, doctor
    kind             text NOT NULL DEFAULT 'family',
    is_responder     boolean NOT NULL DEFAULT false,
    notify           boolean NOT NULL DEFAULT false,
    webhook_url      text
);
CREATE INDEX contacts_resident ON contacts (resident_id, position);

CREATE TABLE devices (
    id               text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    kind             text NOT NULL CHECK (kind IN ('wristband', 'ir_sensor', 'presence_sensor')),
    resident_id      bigint REFERENCES residents (id),
    room             text,
    report_interval_s int NOT NULL DEFAULT 60 CHECK (report_interval_s > 0),
    secret_hash      text,
    enabled          boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_resident ON devices (resident_id);

CREATE TABLE users (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username         text NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    display_name     text NOT NULL DEFAULT '',
    password_hash    text NOT NULL,
    role             text NOT NULL CHECK (role IN ('admin', 'supervisor', 'operator', 'family')),
    disabled         boolean NOT NULL DEFAULT false,
    -- bumped on disable / password reset: tokens carry it, so old tokens die at once
    token_version    int NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE family_links (
    user_id          bigint NOT NULL REFERENCES users (id),
    resident_id      bigint NOT NULL REFERENCES residents (id),
    PRIMARY KEY (user_id, resident_id)
);
CREATE INDEX family_links_resident ON family_links (resident_id);

-- Who read whose health data, and who revealed an access code.
CREATE TABLE access_log (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT now(),
    user_id          bigint REFERENCES users (id),
    resident_id      bigint,
    action           text NOT NULL,
    detail           jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX access_log_resident ON access_log (resident_id, at);
