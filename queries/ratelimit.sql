-- Rate-limit counting: fixed windows of :window_seconds, counted in PostgreSQL so that all
-- workers and replicas share one count. Every sync statement (sync.sql) starts with the
-- `counted` and `quota` CTEs below, word for word, so that it counts its own request in
-- the same statement. From psql:
--   \set buckets '\'{user:550e8400-e29b-41d4-a716-446655440000}\'' \set limits '\'{100}\''
--   \set window_seconds 3600

-- name: count_request(buckets, limits, window_seconds)^
-- Add one hit to each bucket's current window and answer in one row: whether every
-- bucket is within its limit, the new count per bucket (in the order of :buckets), and
-- the seconds left in the window. No buckets (NULL or empty: limiting is off) counts
-- nothing and admits. The upsert takes the row lock until the statement ends, so
-- concurrent requests each see a distinct count and exactly the limit gets through.
WITH counted AS (
  INSERT INTO rate_limit_hits AS h (bucket, window_start, hits)
  SELECT bucket,
         to_timestamp(floor(extract(epoch FROM now()) / :window_seconds) * :window_seconds),
         1
  FROM unnest(CAST(:buckets AS text[])) AS bucket
  ON CONFLICT (bucket, window_start) DO UPDATE SET hits = h.hits + 1
  RETURNING h.bucket, h.hits, h.window_start
),
quota AS MATERIALIZED (
  SELECT coalesce(bool_and(counted.hits <= l.lim), true) AS admitted,
         array_agg(counted.hits ORDER BY l.i) AS hits,
         ceil(extract(epoch FROM max(counted.window_start)) + :window_seconds
              - extract(epoch FROM now()))::integer AS reset_seconds
  FROM unnest(CAST(:buckets AS text[]), CAST(:limits AS integer[]))
         WITH ORDINALITY AS l(bucket, lim, i)
  JOIN counted USING (bucket)
)
SELECT admitted, hits, reset_seconds FROM quota;

-- name: purge_rate_limit_windows(window_seconds)!
-- Forget windows that have ended, so the table stays the size of one window's traffic.
DELETE FROM rate_limit_hits
WHERE window_start < now() - make_interval(secs => :window_seconds);
