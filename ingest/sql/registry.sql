-- The devices ingest accepts: enabled and bound to a resident.
SELECT id, resident_id, kind, enabled FROM devices WHERE id = ANY(%(ids)s);
