-- Rate-limit counts shared by every process and replica: fixed windows, one row per
-- bucket ('user:<id>' or 'ip:<address>') and window. Each process admits requests from
-- what it knows and exchanges its counts here every few hundred milliseconds, in one
-- statement for all its buckets (service/ratelimit.py); no request waits on it.
-- From psql:
--   \set buckets '\'{user:550e8400-e29b-41d4-a716-446655440000}\'' \set deltas '\'{1}\''
--   \set window_start '\'2026-12-02 10:00:00+00\'' \set changed_since '\'2026-12-02 10:00:00+00\''
--   \set learn_limit 10000

-- name: exchange_counts(buckets, deltas, window_start, changed_since, learn_limit)
-- Add this process's new counts (:deltas, one per bucket in :buckets) to the window's
-- totals, and answer those totals and the totals of every other bucket of the window
-- that changed since :changed_since (at most :learn_limit, the latest first): so the
-- process learns what the others counted, also for users it has not served yet. The
-- window is the process's own (:window_start), so its decisions and the stored rows agree
-- on where a window begins. The upsert adds under the row lock, so concurrent exchanges
-- never lose a count; clock_timestamp() marks the change when it happens, not when its
-- transaction began.
WITH added AS (
  INSERT INTO rate_limit_hits AS h (bucket, window_start, hits, changed_at)
  SELECT bucket, CAST(:window_start AS timestamptz), delta, clock_timestamp()
  FROM unnest(CAST(:buckets AS text[]), CAST(:deltas AS integer[])) AS d(bucket, delta)
  ON CONFLICT (bucket, window_start) DO UPDATE
    SET hits = h.hits + EXCLUDED.hits, changed_at = EXCLUDED.changed_at
  RETURNING h.bucket, h.hits
),
learned AS (
  SELECT bucket, hits FROM rate_limit_hits
  WHERE window_start = CAST(:window_start AS timestamptz)
    AND changed_at >= CAST(:changed_since AS timestamptz)
    AND bucket <> ALL (CAST(:buckets AS text[]))
  ORDER BY changed_at DESC
  LIMIT :learn_limit
)
SELECT bucket, hits FROM added
UNION ALL
SELECT bucket, hits FROM learned;

-- name: purge_rate_limit_windows(window_seconds)!
-- Forget windows that ended a whole window ago, so the table stays the size of a couple
-- of windows' traffic. The margin is for clocks: window_start comes from each process's
-- clock, now() from the database's, and a database clock ahead of a process's must not
-- purge that process's current window.
DELETE FROM rate_limit_hits
WHERE window_start < now() - make_interval(secs => 2 * :window_seconds);
