-- Statements the cleanup tests use (never used by the service).

-- name: explain_erase_inactive_records(inactive_days, batch_size)
-- The plan of queries/cleanup.sql's erase_inactive_records; the statement after EXPLAIN
-- must stay identical to the service's (test_cleanup checks), so the plan is its plan.
EXPLAIN
WITH batch AS (
  SELECT user_id FROM user_sync_data
  WHERE last_accessed < now() - make_interval(days => :inactive_days)
  ORDER BY last_accessed
  LIMIT :batch_size
),
erased AS (
  DELETE FROM user_sync_data
  WHERE user_id IN (SELECT user_id FROM batch)
    AND last_accessed < now() - make_interval(days => :inactive_days)
  RETURNING 1
)
SELECT (SELECT count(*) FROM erased) AS erased, (SELECT count(*) FROM batch) AS chosen;

-- name: insert_recent_records(count)!
-- `count` valid records accessed within the last days, as a live table mostly holds.
INSERT INTO user_sync_data
  (user_id, encrypted_blob, iv, timestamp, checksum, blob_size, last_accessed)
SELECT gen_random_uuid(), 'AA==', 'MTIzNDU2Nzg5MGFi', 1, repeat('a', 64), 1,
       now() - make_interval(mins => n)
FROM generate_series(1, :count) AS n;

-- name: age_all_records(days)!
-- Pretend every record was last accessed `days` ago.
UPDATE user_sync_data SET last_accessed = now() - make_interval(days => :days);

-- name: analyze_records()#
-- Fresh statistics, so the planner sees the table as it is.
ANALYZE user_sync_data;
