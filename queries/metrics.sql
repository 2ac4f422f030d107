-- Statements behind the metrics (service/metrics.py).

-- name: estimate_records()$
-- Records stored, for the logikids_sync_records gauge: PostgreSQL's own estimate, because
-- an exact count(*) would read the whole table once a minute in every worker.
-- pg_class.reltuples is what the last VACUUM or ANALYZE counted; autovacuum refreshes it
-- after about 10% of the rows changed, close enough for a gauge. -1 means the table was
-- never vacuumed or analyzed (new, or just truncated): autovacuum has seen few changes,
-- so the table is small, and it is counted exactly (the subquery runs only then).
SELECT CASE WHEN reltuples >= 0 THEN reltuples::bigint
            ELSE (SELECT count(*) FROM user_sync_data) END
FROM pg_class WHERE oid = 'user_sync_data'::regclass;
