-- Rate-limit counts shared by every process and replica: fixed windows, one row per
-- bucket ('user:<id>' or 'ip:<address>') and window. Each process admits requests from
-- what it knows and exchanges its counts here every few hundred milliseconds, in one
-- statement for all its buckets (service/ratelimit.py); no request waits on it.
-- From psql:
--   \set buckets '\'{user:550e8400-e29b-41d4-a716-446655440000}\'' \set deltas '\'{1}\''
--   \set watched '\'{}\'' \set window_start '\'2026-12-02 10:00:00+00\''

-- name: exchange_counts(buckets, deltas, watched, window_start)
-- Add this process's new counts (:deltas, one per bucket in :buckets) to the window's
-- totals and answer every total: those just added to, and those of :watched (buckets
-- this process used lately without new counts), so it learns what the other processes
-- counted. The window is the process's own (:window_start), so its decisions and the
-- stored rows agree on where a window begins. The upsert adds under the row lock, so
-- concurrent exchanges never lose a count.
WITH added AS (
  INSERT INTO rate_limit_hits AS h (bucket, window_start, hits)
  SELECT bucket, CAST(:window_start AS timestamptz), delta
  FROM unnest(CAST(:buckets AS text[]), CAST(:deltas AS integer[])) AS d(bucket, delta)
  ON CONFLICT (bucket, window_start) DO UPDATE SET hits = h.hits + EXCLUDED.hits
  RETURNING h.bucket, h.hits
)
SELECT bucket, hits FROM added
UNION ALL
SELECT bucket, hits FROM rate_limit_hits
WHERE window_start = CAST(:window_start AS timestamptz)
  AND bucket = ANY (CAST(:watched AS text[]));

-- name: purge_rate_limit_windows(window_seconds)!
-- Forget windows that ended a whole window ago, so the table stays the size of a couple
-- of windows' traffic. The margin is for clocks: window_start comes from each process's
-- clock, now() from the database's, and a database clock ahead of a process's must not
-- purge that process's current window.
DELETE FROM rate_limit_hits
WHERE window_start < now() - make_interval(secs => 2 * :window_seconds);
