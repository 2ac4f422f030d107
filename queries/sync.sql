-- The statements behind the four sync endpoints: one statement, one round trip each.
-- Each one first counts the request against the rate limits, with the `counted` and
-- `quota` CTEs of count_request (ratelimit.sql; a test keeps the copies identical), and
-- does its work only when the request is admitted; its answer starts with the verdict:
-- admitted, the new count per bucket, and the seconds left in the window. Counting in the
-- same statement saves a round trip per request, and inline CTEs run 1.8x faster in
-- PostgreSQL than the same count in a PL/pgSQL function (docs/benchmarks.md).
-- Each conditional variant (If-Match / If-None-Match) checks the version and writes in
-- the same statement, so two devices holding the same ETag cannot both win.
--
-- From psql, set each variable with its quotes, then paste the statement (or run
-- `logikids-sync sql NAME user_id=...`, which binds them for you). NULL limits count
-- nothing:
--   \set user_id '\'550e8400-e29b-41d4-a716-446655440000\''
--   \set user_limit NULL \set client_ip NULL \set ip_limit NULL \set window_seconds NULL

-- name: store_record(user_id, encrypted_blob, iv, timestamp, checksum, blob_size, user_limit, client_ip, ip_limit, window_seconds)^
-- Insert the record or replace its content in one upsert; created_at keeps the first
-- upload's time, last_accessed becomes now (an upload is an access), the version is new.
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
),
stored AS (
  INSERT INTO user_sync_data (user_id, encrypted_blob, iv, timestamp, checksum, blob_size)
  SELECT CAST(:user_id AS uuid), :encrypted_blob, :iv, :timestamp, :checksum, :blob_size
  FROM quota WHERE quota.admitted
  ON CONFLICT (user_id) DO UPDATE SET
    encrypted_blob = EXCLUDED.encrypted_blob,
    iv = EXCLUDED.iv,
    timestamp = EXCLUDED.timestamp,
    checksum = EXCLUDED.checksum,
    blob_size = EXCLUDED.blob_size,
    last_accessed = now(),
    version = gen_random_uuid()
  RETURNING version
)
SELECT admitted, user_hits, ip_hits, reset_seconds, (SELECT version FROM stored) AS version
FROM quota;

-- name: replace_record_if_match(user_id, encrypted_blob, iv, timestamp, checksum, blob_size, versions, excluded_versions, user_limit, client_ip, ip_limit, window_seconds)^
-- PUT with If-Match: replace only while the record is at one of :versions (NULL means
-- `*`: any version) and at none of :excluded_versions (If-None-Match). `stored` is true
-- with the new version when stored, false with the current version when the
-- precondition failed, and NULL when there is no record.
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
),
updated AS (
  UPDATE user_sync_data SET
    encrypted_blob = :encrypted_blob,
    iv = :iv,
    timestamp = :timestamp,
    checksum = :checksum,
    blob_size = :blob_size,
    last_accessed = now(),
    version = gen_random_uuid()
  WHERE user_id = :user_id
    AND (CAST(:versions AS uuid[]) IS NULL OR version = ANY (CAST(:versions AS uuid[])))
    AND version <> ALL (coalesce(CAST(:excluded_versions AS uuid[]), '{}'))
    AND (SELECT admitted FROM quota)
  RETURNING version
),
outcome AS (
  SELECT true AS stored, version FROM updated
  UNION ALL
  SELECT false, version FROM user_sync_data
  WHERE user_id = :user_id AND NOT EXISTS (SELECT FROM updated)
)
SELECT admitted, user_hits, ip_hits, reset_seconds, outcome.stored, outcome.version
FROM quota LEFT JOIN outcome ON true;

-- name: store_record_unless_match(user_id, encrypted_blob, iv, timestamp, checksum, blob_size, versions, user_limit, client_ip, ip_limit, window_seconds)^
-- PUT with If-None-Match: create the record, or replace it only when its version is none
-- of :versions (NULL means `*`: create only). `stored` is true with the new version when
-- stored and false with the current version when the precondition failed.
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
),
stored AS (
  INSERT INTO user_sync_data (user_id, encrypted_blob, iv, timestamp, checksum, blob_size)
  SELECT CAST(:user_id AS uuid), :encrypted_blob, :iv, :timestamp, :checksum, :blob_size
  FROM quota WHERE quota.admitted
  ON CONFLICT (user_id) DO UPDATE SET
    encrypted_blob = EXCLUDED.encrypted_blob,
    iv = EXCLUDED.iv,
    timestamp = EXCLUDED.timestamp,
    checksum = EXCLUDED.checksum,
    blob_size = EXCLUDED.blob_size,
    last_accessed = now(),
    version = gen_random_uuid()
  WHERE CAST(:versions AS uuid[]) IS NOT NULL
    AND user_sync_data.version <> ALL (CAST(:versions AS uuid[]))
  RETURNING version
),
outcome AS (
  SELECT true AS stored, version FROM stored
  UNION ALL
  SELECT false, version FROM user_sync_data
  WHERE user_id = :user_id AND NOT EXISTS (SELECT FROM stored)
)
SELECT admitted, user_hits, ip_hits, reset_seconds, outcome.stored, outcome.version
FROM quota LEFT JOIN outcome ON true;

-- name: fetch_record(user_id, known_versions, any_version, user_limit, client_ip, ip_limit, window_seconds)^
-- The record for one user, marking it accessed in the same statement. The mark is coarse:
-- last_accessed is written only when it is over an hour old, which spares a write per
-- read and stays far inside the two-year cleanup horizon (docs/protocol.md). When the client
-- already holds the current version (If-None-Match: :known_versions, or `*` as
-- :any_version) the blob is left out (NULL) and the answer is a 304. No record: the
-- record's columns are NULL.
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
),
touched AS (
  UPDATE user_sync_data SET last_accessed = now()
  WHERE user_id = :user_id AND last_accessed < now() - interval '1 hour'
    AND (SELECT admitted FROM quota)
  RETURNING encrypted_blob, iv, timestamp, checksum, version
),
found AS (
  SELECT encrypted_blob, iv, timestamp, checksum, version FROM touched
  UNION ALL
  SELECT encrypted_blob, iv, timestamp, checksum, version FROM user_sync_data
  WHERE user_id = :user_id AND NOT EXISTS (SELECT FROM touched)
    AND (SELECT admitted FROM quota)
),
answer AS (
  SELECT CASE WHEN unchanged THEN NULL ELSE encrypted_blob END AS encrypted_blob,
         iv, timestamp, checksum, version, unchanged
  FROM found,
       LATERAL (SELECT coalesce(CAST(:any_version AS boolean), false)
                       OR version = ANY (coalesce(CAST(:known_versions AS uuid[]), '{}'))
               ) AS c(unchanged)
)
SELECT admitted, user_hits, ip_hits, reset_seconds,
       answer.encrypted_blob, answer.iv, answer.timestamp, answer.checksum, answer.version,
       answer.unchanged
FROM quota LEFT JOIN answer ON true;

-- name: verify_record(user_id, user_limit, client_ip, ip_limit, window_seconds)^
-- POST verify (device pairing): the record's version, NULL when there is none.
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
SELECT admitted, user_hits, ip_hits, reset_seconds,
       (SELECT version FROM user_sync_data WHERE user_id = :user_id AND quota.admitted)
         AS version
FROM quota;

-- name: record_version(user_id)$
-- The record's version, or NULL when there is none, without counting a request: the
-- current ETag a 412 answers with.
SELECT version FROM user_sync_data WHERE user_id = :user_id;

-- name: erase_record(user_id, user_limit, client_ip, ip_limit, window_seconds)^
-- Erase the record (GDPR right to erasure); succeeds whether or not it existed.
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
),
erased AS (
  DELETE FROM user_sync_data WHERE user_id = :user_id AND (SELECT admitted FROM quota)
)
SELECT admitted, user_hits, ip_hits, reset_seconds FROM quota;

-- name: erase_record_if_match(user_id, versions, user_limit, client_ip, ip_limit, window_seconds)^
-- DELETE with If-Match: erase only while the record is at one of :versions (NULL means
-- `*`). `erased` is true with the erased version, false with the current version, or
-- NULL when there is no record.
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
),
erased AS (
  DELETE FROM user_sync_data
  WHERE user_id = :user_id
    AND (CAST(:versions AS uuid[]) IS NULL OR version = ANY (CAST(:versions AS uuid[])))
    AND (SELECT admitted FROM quota)
  RETURNING version
),
outcome AS (
  SELECT true AS erased, version FROM erased
  UNION ALL
  SELECT false, version FROM user_sync_data
  WHERE user_id = :user_id AND NOT EXISTS (SELECT FROM erased)
)
SELECT admitted, user_hits, ip_hits, reset_seconds, outcome.erased, outcome.version
FROM quota LEFT JOIN outcome ON true;
