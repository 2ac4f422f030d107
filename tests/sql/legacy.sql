-- Statements the import-legacy tests use to arrange and inspect records (tests/test_legacy.py).

-- name: legacy_store_record(user_id, encrypted_blob, iv, timestamp, checksum, blob_size, created_at, last_accessed)!
-- A record as a client (or an earlier import) left it, with chosen dates.
INSERT INTO user_sync_data
  (user_id, encrypted_blob, iv, timestamp, checksum, blob_size, created_at, last_accessed)
VALUES (:user_id, :encrypted_blob, :iv, :timestamp, :checksum, :blob_size, :created_at,
        :last_accessed);

-- name: legacy_record_state(user_id)^
-- Every column including the version, which changes on any write of the content.
SELECT user_id, encrypted_blob, iv, timestamp, checksum, created_at, last_accessed, blob_size,
       version
FROM user_sync_data WHERE user_id = :user_id;

-- name: legacy_all_records()
-- The whole table, to show that a run changed nothing.
SELECT user_id, encrypted_blob, iv, timestamp, checksum, created_at, last_accessed, blob_size,
       version
FROM user_sync_data ORDER BY user_id;
