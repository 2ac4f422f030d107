-- The statements behind the four sync endpoints. Each reads or writes user_sync_data
-- for one user_id and nothing else, so it is one round trip here and a single-shard
-- (router) statement on Citus. Rate limits are counted off this path
-- (service/ratelimit.py), so a GET or verify writes nothing but the coarse
-- last_accessed mark. A new version comes in as :version (the service draws it), and
-- ON CONFLICT DO UPDATE takes the time from the proposed row (EXCLUDED), because Citus
-- allows no volatile function there. Each conditional variant (If-Match /
-- If-None-Match) checks the version and writes in the same statement, so two devices
-- holding the same ETag cannot both win. Every statement answers rows (RETURNING), none
-- when there is no record.
--
-- From psql, set each variable with its quotes, then paste the statement (or run
-- `logikids-sync sql NAME user_id=...`, which binds them for you):
--   \set user_id '\'550e8400-e29b-41d4-a716-446655440000\''
--   \set version '\'7d0f6c4e-8a51-4c1e-9f8e-2b1c3d4e5f60\''

-- name: store_record(user_id, encrypted_blob, iv, timestamp, checksum, blob_size, version)^
-- Insert the record or replace its content in one upsert; created_at keeps the first
-- upload's time, last_accessed becomes now (an upload is an access), the version is new.
INSERT INTO user_sync_data AS r
  (user_id, encrypted_blob, iv, timestamp, checksum, blob_size, version)
VALUES (:user_id, :encrypted_blob, :iv, :timestamp, :checksum, :blob_size, :version)
ON CONFLICT (user_id) DO UPDATE SET
  encrypted_blob = EXCLUDED.encrypted_blob,
  iv = EXCLUDED.iv,
  timestamp = EXCLUDED.timestamp,
  checksum = EXCLUDED.checksum,
  blob_size = EXCLUDED.blob_size,
  last_accessed = EXCLUDED.last_accessed,
  version = EXCLUDED.version
RETURNING version;

-- name: replace_record_if_match(user_id, encrypted_blob, iv, timestamp, checksum, blob_size, version, versions, excluded_versions)^
-- PUT with If-Match: replace only while the record is at one of :versions (NULL means
-- `*`: any version) and at none of :excluded_versions (If-None-Match). Answers `stored`
-- true with the new version when stored, false with the current version when the
-- precondition failed, and no row when there is no record.
WITH updated AS (
  UPDATE user_sync_data SET
    encrypted_blob = :encrypted_blob,
    iv = :iv,
    timestamp = :timestamp,
    checksum = :checksum,
    blob_size = :blob_size,
    last_accessed = now(),
    version = :version
  WHERE user_id = :user_id
    AND (CAST(:versions AS uuid[]) IS NULL OR version = ANY (CAST(:versions AS uuid[])))
    AND version <> ALL (coalesce(CAST(:excluded_versions AS uuid[]), '{}'))
  RETURNING version
)
SELECT true AS stored, version FROM updated
UNION ALL
SELECT false, version FROM user_sync_data
WHERE user_id = :user_id AND NOT EXISTS (SELECT FROM updated);

-- name: store_record_unless_match(user_id, encrypted_blob, iv, timestamp, checksum, blob_size, version, versions)^
-- PUT with If-None-Match: create the record, or replace it only when its version is none
-- of :versions (NULL means `*`: create only). Answers the new version when stored, no
-- row when the precondition failed (the service then reads the current version for its
-- 412). One plain upsert, without a CTE: Citus routes it to one shard.
INSERT INTO user_sync_data AS r
  (user_id, encrypted_blob, iv, timestamp, checksum, blob_size, version)
VALUES (:user_id, :encrypted_blob, :iv, :timestamp, :checksum, :blob_size, :version)
ON CONFLICT (user_id) DO UPDATE SET
  encrypted_blob = EXCLUDED.encrypted_blob,
  iv = EXCLUDED.iv,
  timestamp = EXCLUDED.timestamp,
  checksum = EXCLUDED.checksum,
  blob_size = EXCLUDED.blob_size,
  last_accessed = EXCLUDED.last_accessed,
  version = EXCLUDED.version
WHERE CAST(:versions AS uuid[]) IS NOT NULL
  AND r.version <> ALL (CAST(:versions AS uuid[]))
RETURNING version;

-- name: fetch_record(user_id, known_versions, any_version)^
-- The record for one user, marking it accessed in the same statement. The mark is coarse:
-- last_accessed is written only when it is over an hour old, so a read writes nothing
-- most of the time and the mark stays far inside the two-year cleanup horizon
-- (docs/protocol.md). When the client already holds the current version (If-None-Match:
-- :known_versions, or `*` as :any_version) the blob is left out (NULL) and the answer is
-- a 304. No record: no row.
WITH touched AS (
  UPDATE user_sync_data SET last_accessed = now()
  WHERE user_id = :user_id AND last_accessed < now() - interval '1 hour'
  RETURNING encrypted_blob, iv, timestamp, checksum, version
),
found AS (
  SELECT encrypted_blob, iv, timestamp, checksum, version FROM touched
  UNION ALL
  SELECT encrypted_blob, iv, timestamp, checksum, version FROM user_sync_data
  WHERE user_id = :user_id AND NOT EXISTS (SELECT FROM touched)
)
SELECT CASE WHEN unchanged THEN NULL ELSE encrypted_blob END AS encrypted_blob,
       iv, timestamp, checksum, version, unchanged
FROM found,
     LATERAL (SELECT coalesce(CAST(:any_version AS boolean), false)
                     OR version = ANY (coalesce(CAST(:known_versions AS uuid[]), '{}'))
             ) AS c(unchanged);

-- name: record_version(user_id)^
-- The record's version, no row when there is none: POST verify (device pairing), and
-- the current ETag a 412 answers with.
SELECT version FROM user_sync_data WHERE user_id = :user_id;

-- name: erase_record(user_id)^
-- Erase the record (GDPR right to erasure); succeeds whether or not it existed.
DELETE FROM user_sync_data WHERE user_id = :user_id RETURNING version;

-- name: erase_record_if_match(user_id, versions)^
-- DELETE with If-Match: erase only while the record is at one of :versions (NULL means
-- `*`). Answers `erased` true with the erased version, false with the current version,
-- or no row when there is no record.
WITH erased AS (
  DELETE FROM user_sync_data
  WHERE user_id = :user_id
    AND (CAST(:versions AS uuid[]) IS NULL OR version = ANY (CAST(:versions AS uuid[])))
  RETURNING version
)
SELECT true AS erased, version FROM erased
UNION ALL
SELECT false, version FROM user_sync_data
WHERE user_id = :user_id AND NOT EXISTS (SELECT FROM erased);
