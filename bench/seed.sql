-- Data for `make bench`, loaded with aiosql like queries/. User n has the id
-- 00000000-0000-4000-8000-<n as 12 hex digits>, the same ids bench/wrk/sync.lua asks for.
-- Every row gets the same random blob: TOAST compresses each value on its own, so a shared
-- incompressible blob costs every row its full size, as real ciphertext would.

-- name: seed_users(first, last, encrypted_blob, iv, checksum, blob_size, age_days)!
-- Users first..last with this blob, last accessed age_days ago; existing rows are kept.
INSERT INTO user_sync_data
  (user_id, encrypted_blob, iv, timestamp, checksum, blob_size, created_at, last_accessed)
SELECT CAST('00000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0') AS uuid),
       :encrypted_blob, :iv, 1700000000000, :checksum, :blob_size,
       now() - make_interval(days => :age_days), now() - make_interval(days => :age_days)
FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS n
ON CONFLICT (user_id) DO NOTHING;

-- name: table_size()$
-- Bytes on disk for user_sync_data with its TOAST table and indexes.
SELECT pg_total_relation_size('user_sync_data');

-- name: forget_rate_limits()!
-- Start each case with an empty limiter table, as a new clock hour would.
TRUNCATE rate_limit_hits;

-- name: vacuum_analyze()!
VACUUM ANALYZE;

-- name: checkpoint()!
-- Write out what the load runs left dirty, so an "idle machine" case starts idle.
CHECKPOINT;
