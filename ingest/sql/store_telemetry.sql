-- Move staged readings into telemetry exactly once, and fold only the rows really inserted into the
-- per-minute and per-hour rollups (so a redelivered batch changes nothing anywhere).
WITH ins AS (
    INSERT INTO telemetry AS t
    SELECT DISTINCT ON (device_id, ts, seq) *
    FROM stage_telemetry
    ORDER BY device_id, ts, seq
    ON CONFLICT DO NOTHING
    RETURNING resident_id, ts, hr, spo2, motion, steps
), useful AS (
    SELECT * FROM ins
    WHERE resident_id IS NOT NULL
      AND (hr IS NOT NULL OR spo2 IS NOT NULL OR motion OR steps IS NOT NULL)
), per_minute AS (
    INSERT INTO vitals_1m AS v (resident_id, bucket, hr_min, hr_max, hr_sum, hr_n,
                                spo2_min, spo2_max, spo2_sum, spo2_n, motion_n, steps_max)
    SELECT resident_id, date_trunc('minute', ts), min(hr), max(hr), coalesce(sum(hr), 0), count(hr),
           min(spo2), max(spo2), coalesce(sum(spo2), 0), count(spo2),
           count(*) FILTER (WHERE motion), max(steps)
    FROM useful
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (resident_id, bucket) DO UPDATE SET
        hr_min = LEAST(v.hr_min, EXCLUDED.hr_min),
        hr_max = GREATEST(v.hr_max, EXCLUDED.hr_max),
        hr_sum = v.hr_sum + EXCLUDED.hr_sum,
        hr_n = v.hr_n + EXCLUDED.hr_n,
        spo2_min = LEAST(v.spo2_min, EXCLUDED.spo2_min),
        spo2_max = GREATEST(v.spo2_max, EXCLUDED.spo2_max),
        spo2_sum = v.spo2_sum + EXCLUDED.spo2_sum,
        spo2_n = v.spo2_n + EXCLUDED.spo2_n,
        motion_n = v.motion_n + EXCLUDED.motion_n,
        steps_max = GREATEST(v.steps_max, EXCLUDED.steps_max)
), per_hour AS (
    INSERT INTO vitals_1h AS v (resident_id, bucket, hr_min, hr_max, hr_sum, hr_n,
                                spo2_min, spo2_max, spo2_sum, spo2_n, motion_n, steps_max)
    SELECT resident_id, date_trunc('hour', ts), min(hr), max(hr), coalesce(sum(hr), 0), count(hr),
           min(spo2), max(spo2), coalesce(sum(spo2), 0), count(spo2),
           count(*) FILTER (WHERE motion), max(steps)
    FROM useful
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (resident_id, bucket) DO UPDATE SET
        hr_min = LEAST(v.hr_min, EXCLUDED.hr_min),
        hr_max = GREATEST(v.hr_max, EXCLUDED.hr_max),
        hr_sum = v.hr_sum + EXCLUDED.hr_sum,
        hr_n = v.hr_n + EXCLUDED.hr_n,
        spo2_min = LEAST(v.spo2_min, EXCLUDED.spo2_min),
        spo2_max = GREATEST(v.spo2_max, EXCLUDED.spo2_max),
        spo2_sum = v.spo2_sum + EXCLUDED.spo2_sum,
        spo2_n = v.spo2_n + EXCLUDED.spo2_n,
        motion_n = v.motion_n + EXCLUDED.motion_n,
        steps_max = GREATEST(v.steps_max, EXCLUDED.steps_max)
)
SELECT count(*) AS inserted FROM ins;
