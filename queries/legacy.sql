-- `logikids-sync import-legacy` (service/legacy.py, docs/operations.md): the TypeScript service's
-- data/sync/<userId>.json files, moved into user_sync_data one batch per statement. Each
-- field of a batch travels as one array and `unnest` turns the arrays back into rows, so
-- a thousand files cost one round trip. A batch names each user id once (the command
-- keeps the newest of several files for one user).
--
-- Every file gets one outcome:
--   imported  no record yet: inserted, with the file's created_at and last_accessed
--   updated   the record's timestamp was lower: its content is replaced, and it keeps
--             the earlier created_at and the later last_accessed of the two
--   older     the record's timestamp is higher: the record is left untouched
--   present   same timestamp, blob, iv and checksum: left untouched (a re-run lands here)
--   conflict  same timestamp, different content: left untouched, the database being the
--             copy clients have been using since the move
--
-- From psql: `logikids-sync sql classify_records user_ids={...} ...`, arrays given as
-- PostgreSQL array literals.

-- name: import_records(user_ids, encrypted_blobs, ivs, timestamps, checksums, blob_sizes, created_ats, last_accesseds)
-- Upsert one batch and return each user id's outcome. The ON CONFLICT ... WHERE is what
-- never overwrites a newer record: it is checked against the row as it is when written,
-- even while clients store meanwhile. Written rows are told apart by xmax = 0 (the row
-- was inserted by this statement, not updated); rows left alone are classified against
-- the statement's snapshot, which the CTE's writes do not change. Two forms are for
-- Citus (distributed PostgreSQL): the new version is drawn in the SELECT, since Citus
-- allows no volatile function in DO UPDATE SET, and the stored rows are looked up by the
-- batch's user ids (= ANY), so Citus reads only the shards that hold them instead of
-- pulling the whole table to the coordinator for the join.
WITH incoming AS (
  SELECT *
  FROM unnest(
    CAST(:user_ids AS uuid[]),
    CAST(:encrypted_blobs AS text[]),
    CAST(:ivs AS text[]),
    CAST(:timestamps AS bigint[]),
    CAST(:checksums AS text[]),
    CAST(:blob_sizes AS integer[]),
    CAST(:created_ats AS timestamptz[]),
    CAST(:last_accesseds AS timestamptz[])
  ) AS f (user_id, encrypted_blob, iv, timestamp, checksum, blob_size, created_at,
          last_accessed)
),
written AS (
  INSERT INTO user_sync_data AS d
    (user_id, encrypted_blob, iv, timestamp, checksum, blob_size, created_at, last_accessed,
     version)
  -- Dates in the future (a client's clock) are clamped to now: a lastAccessed in the
  -- future would keep the record from ever being cleaned up.
  SELECT user_id, encrypted_blob, iv, timestamp, checksum, blob_size,
         least(created_at, now()), least(last_accessed, now()), gen_random_uuid()
  FROM incoming
  ON CONFLICT (user_id) DO UPDATE SET
    encrypted_blob = EXCLUDED.encrypted_blob,
    iv = EXCLUDED.iv,
    timestamp = EXCLUDED.timestamp,
    checksum = EXCLUDED.checksum,
    blob_size = EXCLUDED.blob_size,
    created_at = least(d.created_at, EXCLUDED.created_at),
    last_accessed = greatest(d.last_accessed, EXCLUDED.last_accessed),
    version = EXCLUDED.version
  WHERE d.timestamp < EXCLUDED.timestamp
  RETURNING d.user_id, d.xmax = 0 AS inserted
)
SELECT f.user_id,
       CASE
         WHEN w.inserted THEN 'imported'
         WHEN w.user_id IS NOT NULL THEN 'updated'
         WHEN d.timestamp = f.timestamp
              AND (d.iv, d.checksum, d.encrypted_blob) = (f.iv, f.checksum, f.encrypted_blob)
           THEN 'present'
         WHEN d.timestamp = f.timestamp THEN 'conflict'
         ELSE 'older'
       END AS outcome
FROM incoming AS f
LEFT JOIN written AS w ON w.user_id = f.user_id
LEFT JOIN (
  SELECT user_id, timestamp, iv, checksum, encrypted_blob FROM user_sync_data
  WHERE user_id = ANY (CAST(:user_ids AS uuid[]))
) AS d ON d.user_id = f.user_id;

-- name: classify_records(user_ids, encrypted_blobs, ivs, timestamps, checksums)
-- What `import-legacy --dry-run` reports: the outcome import_records would give each
-- file now, read-only (the same outcomes, decided from the same comparisons; the same
-- lookup by user ids as import_records).
SELECT f.user_id,
       CASE
         WHEN d.user_id IS NULL THEN 'imported'
         WHEN d.timestamp < f.timestamp THEN 'updated'
         WHEN d.timestamp > f.timestamp THEN 'older'
         WHEN (d.iv, d.checksum, d.encrypted_blob) = (f.iv, f.checksum, f.encrypted_blob)
           THEN 'present'
         ELSE 'conflict'
       END AS outcome
FROM unnest(
  CAST(:user_ids AS uuid[]),
  CAST(:encrypted_blobs AS text[]),
  CAST(:ivs AS text[]),
  CAST(:timestamps AS bigint[]),
  CAST(:checksums AS text[])
) AS f (user_id, encrypted_blob, iv, timestamp, checksum)
LEFT JOIN (
  SELECT user_id, timestamp, iv, checksum, encrypted_blob FROM user_sync_data
  WHERE user_id = ANY (CAST(:user_ids AS uuid[]))
) AS d ON d.user_id = f.user_id;
