-- Plain PostgreSQL equivalent of drop_chunks: delete raw rows older than the cut-off in bounded slices.
DELETE FROM telemetry WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM telemetry WHERE ts < %(cutoff)s LIMIT %(slice)s
));
