-- The statements behind the four sync endpoints: one statement, one round trip each.
-- From psql: \set user_id '\'550e8400-e29b-41d4-a716-446655440000\'' then paste a
-- statement, or use `logikids-sync sql NAME user_id=...` which binds the values for you.

-- name: store_record(user_id, encrypted_blob, iv, timestamp, checksum, blob_size)!
-- Insert the record or replace its content in one upsert; created_at keeps the first
-- upload's time, last_accessed becomes now (an upload is an access).
INSERT INTO user_sync_data (user_id, encrypted_blob, iv, timestamp, checksum, blob_size)
VALUES (:user_id, :encrypted_blob, :iv, :timestamp, :checksum, :blob_size)
ON CONFLICT (user_id) DO UPDATE SET
  encrypted_blob = EXCLUDED.encrypted_blob,
  iv = EXCLUDED.iv,
  timestamp = EXCLUDED.timestamp,
  checksum = EXCLUDED.checksum,
  blob_size = EXCLUDED.blob_size,
  last_accessed = now();

-- name: fetch_record(user_id)^
-- The record for one user, marking it accessed in the same statement. The mark is coarse:
-- last_accessed is written only when it is over an hour old, which spares a write per
-- read and stays far inside the two-year cleanup horizon (DESIGN §2).
WITH touched AS (
  UPDATE user_sync_data SET last_accessed = now()
  WHERE user_id = :user_id AND last_accessed < now() - interval '1 hour'
  RETURNING encrypted_blob, iv, timestamp, checksum
)
SELECT encrypted_blob, iv, timestamp, checksum FROM touched
UNION ALL
SELECT encrypted_blob, iv, timestamp, checksum FROM user_sync_data
WHERE user_id = :user_id AND NOT EXISTS (SELECT FROM touched);

-- name: record_exists(user_id)$
-- Whether a record exists (device pairing); reads nothing else.
SELECT EXISTS (SELECT FROM user_sync_data WHERE user_id = :user_id);

-- name: erase_record(user_id)!
-- Erase the record (GDPR right to erasure); succeeds whether or not it existed.
DELETE FROM user_sync_data WHERE user_id = :user_id;
