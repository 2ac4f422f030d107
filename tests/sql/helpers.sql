-- Statements the tests use to look inside the database (never used by the service).

-- name: raw_record(user_id)^
-- Every column of one record, to check storage effects.
SELECT user_id, encrypted_blob, iv, timestamp, checksum, created_at, last_accessed, blob_size
FROM user_sync_data WHERE user_id = :user_id;

-- name: count_records()$
SELECT count(*) FROM user_sync_data;

-- name: insert_raw_record(user_id, encrypted_blob, iv, timestamp, checksum, blob_size)!
-- Straight into the table, bypassing the service: proves what the CHECKs accept.
INSERT INTO user_sync_data (user_id, encrypted_blob, iv, timestamp, checksum, blob_size)
VALUES (:user_id, :encrypted_blob, :iv, :timestamp, :checksum, :blob_size);

-- name: age_record(user_id, days)!
-- Pretend the record was last touched (and created) `days` ago.
UPDATE user_sync_data
SET last_accessed = now() - make_interval(days => :days),
    created_at = now() - make_interval(days => :days)
WHERE user_id = :user_id;

-- name: set_last_accessed_ago(user_id, seconds)!
UPDATE user_sync_data SET last_accessed = now() - make_interval(secs => :seconds)
WHERE user_id = :user_id;

-- name: connections_from(application_name)$
-- How many sessions an application holds open on this server.
SELECT count(*) FROM pg_stat_activity WHERE application_name = :application_name;

-- name: applied_versions()
SELECT version, sha256 FROM schema_migrations ORDER BY version;

-- name: table_exists(name)$
SELECT to_regclass(:name) IS NOT NULL;

-- name: rate_limit_rows()
SELECT bucket, hits, window_start FROM rate_limit_hits ORDER BY bucket;

-- name: shift_rate_limit_windows(seconds)!
-- Move every counted window into the past, as if `seconds` had gone by.
UPDATE rate_limit_hits SET window_start = window_start - make_interval(secs => :seconds);

-- name: all_records()
-- Every column of every record, including what the service never returns.
SELECT user_id, encrypted_blob, iv, timestamp, checksum, created_at, last_accessed,
       blob_size, version
FROM user_sync_data ORDER BY user_id;
