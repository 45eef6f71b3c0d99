-- What the rules need to know about residents: their settings and their enabled devices.
SELECT r.id, r.timezone, r.home_lat, r.home_lon, r.geofence_m, r.dementia, r.thresholds,
       COALESCE(
           (SELECT jsonb_agg(jsonb_build_object('id', d.id, 'kind', d.kind, 'room', d.room,
                                                'report_interval_s', d.report_interval_s) ORDER BY d.id)
              FROM devices d
             WHERE d.resident_id = r.id AND d.enabled),
           '[]'::jsonb) AS devices
  FROM residents r
 WHERE r.id = ANY(%s) AND r.active
