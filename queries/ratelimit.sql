-- Rate-limit counting: fixed windows of :window_seconds, counted in PostgreSQL so that all
-- workers and replicas share one count. Every sync statement (sync.sql) starts with the
-- `counted` and `quota` CTEs below, word for word, so that it counts its own request in
-- the same statement. From psql (a NULL limit turns that bucket off):
--   \set user_id '\'550e8400-e29b-41d4-a716-446655440000\'' \set user_limit 100
--   \set client_ip '\'192.0.2.1\'' \set ip_limit NULL \set window_seconds 3600

-- name: count_request(user_id, user_limit, client_ip, ip_limit, window_seconds)^
-- Add one hit to the user's bucket ('user:<id>', when :user_limit is set) and the
-- client's ('ip:<address>', when :client_ip and :ip_limit are set) in the current
-- window, and answer in one row: whether both are within their limits, the new counts
-- (NULL for a bucket not counted), and the seconds left in the window. The upsert takes
-- the row lock until the statement ends, so concurrent requests each see a distinct
-- count and exactly the limit gets through.
WITH counted AS (
  INSERT INTO rate_limit_hits AS h (bucket, window_start, hits)
  SELECT bucket,
         to_timestamp(floor(extract(epoch FROM now()) / :window_seconds) * :window_seconds),
         1
  FROM (VALUES ('user:' || CAST(:user_id AS uuid), CAST(:user_limit AS integer)),
               ('ip:' || CAST(:client_ip AS text), CAST(:ip_limit AS integer))
       ) AS b(bucket, lim)
  WHERE bucket IS NOT NULL AND lim IS NOT NULL
  ON CONFLICT (bucket, window_start) DO UPDATE SET hits = h.hits + 1
  RETURNING h.bucket, h.hits, h.window_start
),
quota AS MATERIALIZED (
  SELECT coalesce(bool_and(hits <= CASE WHEN starts_with(bucket, 'user:')
                                        THEN CAST(:user_limit AS integer)
                                        ELSE CAST(:ip_limit AS integer) END), true) AS admitted,
         max(hits) FILTER (WHERE starts_with(bucket, 'user:')) AS user_hits,
         max(hits) FILTER (WHERE starts_with(bucket, 'ip:')) AS ip_hits,
         ceil(extract(epoch FROM max(window_start)) + :window_seconds
              - extract(epoch FROM now()))::integer AS reset_seconds
  FROM counted
)
SELECT admitted, user_hits, ip_hits, reset_seconds FROM quota;

-- name: purge_rate_limit_windows(window_seconds)!
-- Forget windows that have ended, so the table stays the size of one window's traffic.
DELETE FROM rate_limit_hits
WHERE window_start < now() - make_interval(secs => :window_seconds);
