-- Rate-limit counting: fixed windows of :window_seconds, counted in PostgreSQL so that all
-- workers and replicas share one count. Each sync statement (sync.sql) counts its own
-- request through admit_request() (migrations/006), in the same statement. From psql:
--   \set buckets '\'{user:550e8400-e29b-41d4-a716-446655440000}\'' \set limits '\'{100}\''
--   \set window_seconds 3600

-- name: count_request(buckets, limits, window_seconds)^
-- Count one request against each bucket, as a sync statement does: (admitted, the new
-- count per bucket, seconds left in the window).
SELECT admitted, hits, reset_seconds
FROM admit_request(CAST(:buckets AS text[]), CAST(:limits AS integer[]),
                   CAST(:window_seconds AS integer));

-- name: purge_rate_limit_windows(window_seconds)!
-- Forget windows that have ended, so the table stays the size of one window's traffic.
DELETE FROM rate_limit_hits
WHERE window_start < now() - make_interval(secs => :window_seconds);
