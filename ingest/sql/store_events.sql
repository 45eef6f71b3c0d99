WITH ins AS (
    INSERT INTO events
    SELECT DISTINCT ON (device_id, ts, seq) *
    FROM stage_events
    ORDER BY device_id, ts, seq
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) AS inserted FROM ins;
