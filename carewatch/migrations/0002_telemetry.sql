-- Time series. Unique keys include the time column (required for hypertables) and are the
-- (device_id, ts, seq) identity of protocol v1, so redelivered messages are stored once.
-- {{hypertable:...}} lines are expanded by carewatch.migrate: create_hypertable() on TimescaleDB,
-- nothing on plain PostgreSQL (the primary keys serve as the equivalent indexes there).

CREATE TABLE telemetry (
    device_id        text NOT NULL,
    ts               timestamptz NOT NULL,
    seq              bigint NOT NULL,
    resident_id      bigint,
    received_at      timestamptz NOT NULL DEFAULT now(),
    hr               smallint,
    spo2             smallint,
    battery          smallint,
    worn             boolean,
    steps            integer,
    lat              double precision,
    lon              double precision,
    acc_m            real,
    room             text,
    motion           boolean,
    presence         boolean,
    PRIMARY KEY (device_id, ts, seq)
);
CREATE INDEX telemetry_resident_ts ON telemetry (resident_id, ts DESC);
{{hypertable:telemetry:ts:1 day}}

CREATE TABLE events (
    device_id        text NOT NULL,
    ts               timestamptz NOT NULL,
    seq              bigint NOT NULL,
    resident_id      bigint,
    received_at      timestamptz NOT NULL DEFAULT now(),
    type             text NOT NULL,
    confidence       real,
    ref_seq          bigint,
    room             text,
    lat              double precision,
    lon              double precision,
    category         text,
    PRIMARY KEY (device_id, ts, seq)
);
CREATE INDEX events_resident_ts ON events (resident_id, ts DESC);
{{hypertable:events:ts:7 days}}

CREATE TABLE device_status (
    device_id        text NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    ts               timestamptz,
    online           boolean NOT NULL,
    fw               text,
    battery          smallint
);
CREATE INDEX device_status_device ON device_status (device_id, received_at DESC);

-- Downsampled history, maintained by ingest in the same transaction as the raw rows it stems from
-- (only rows actually inserted count, so it is exactly-once too). Long ranges read these.
CREATE TABLE vitals_1m (
    resident_id      bigint NOT NULL,
    bucket           timestamptz NOT NULL,
    hr_min           smallint,
    hr_max           smallint,
    hr_sum           bigint NOT NULL DEFAULT 0,
    hr_n             integer NOT NULL DEFAULT 0,
    spo2_min         smallint,
    spo2_max         smallint,
    spo2_sum         bigint NOT NULL DEFAULT 0,
    spo2_n           integer NOT NULL DEFAULT 0,
    motion_n         integer NOT NULL DEFAULT 0,
    steps_max        integer,
    PRIMARY KEY (resident_id, bucket)
);
{{hypertable:vitals_1m:bucket:7 days}}

CREATE TABLE vitals_1h (LIKE vitals_1m INCLUDING DEFAULTS, PRIMARY KEY (resident_id, bucket));
{{hypertable:vitals_1h:bucket:90 days}}

-- Everything refused, with why; never blocks good traffic.
CREATE TABLE dead_letters (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at      timestamptz NOT NULL DEFAULT now(),
    topic            text NOT NULL,
    device_id        text,
    reason           text NOT NULL,
    detail           text NOT NULL DEFAULT '',
    payload          bytea NOT NULL,
    payload_bytes    integer NOT NULL,
    source           text NOT NULL DEFAULT 'ingest'
);
CREATE INDEX dead_letters_received ON dead_letters (received_at DESC);
CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at DESC);
