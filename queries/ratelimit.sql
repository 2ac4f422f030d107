-- Rate-limit counting: fixed windows of :window_seconds, counted in PostgreSQL so that all
-- workers and replicas share one count. From psql:
--   \set buckets '\'{user:550e8400-e29b-41d4-a716-446655440000}\'' \set window_seconds 3600

-- name: count_request(buckets, window_seconds)
-- Add one hit to each bucket's current window and return the new counts, atomically: the
-- upsert takes the row lock, so concurrent requests each see a distinct count and exactly
-- the limit gets through. `reset_seconds` is the time left in the window.
INSERT INTO rate_limit_hits AS h (bucket, window_start, hits)
SELECT bucket,
       to_timestamp(floor(extract(epoch FROM now()) / :window_seconds) * :window_seconds),
       1
FROM unnest(CAST(:buckets AS text[])) AS bucket
ON CONFLICT (bucket, window_start) DO UPDATE SET hits = h.hits + 1
RETURNING bucket, hits,
          ceil(extract(epoch FROM h.window_start) + :window_seconds
               - extract(epoch FROM now()))::integer AS reset_seconds;

-- name: purge_rate_limit_windows(window_seconds)!
-- Forget windows that have ended, so the table stays the size of one window's traffic.
DELETE FROM rate_limit_hits
WHERE window_start < now() - make_interval(secs => :window_seconds);
