-- Per-connection staging tables: COPY lands here, then one INSERT ... ON CONFLICT moves new rows on.
CREATE TEMP TABLE IF NOT EXISTS stage_telemetry (LIKE telemetry INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_events (LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
