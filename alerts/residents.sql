-- What the rules need to know about residents: their settings and their enabled devices.
-- Residents are asked for by id (%(ids)s) and/or as the owners of devices (%(devices)s), so a registry
-- cache miss on a device costs one round trip, not two.
WITH wanted AS (
    SELECT unnest(%(ids)s::bigint[]) AS id
    UNION
    SELECT resident_id FROM devices
     WHERE id = ANY(%(devices)s::text[]) AND enabled AND resident_id IS NOT NULL
)
SELECT r.id, r.timezone, r.home_lat, r.home_lon, r.geofence_m, r.dementia, r.thresholds,
       COALESCE(
           (SELECT jsonb_agg(jsonb_build_object('id', d.id, 'kind', d.kind, 'room', d.room,
                                                'report_interval_s', d.report_interval_s) ORDER BY d.id)
              FROM devices d
             WHERE d.resident_id = r.id AND d.enabled),
           '[]'::jsonb) AS devices
  FROM residents r
  JOIN wanted w ON w.id = r.id
 WHERE r.active
