-- Statements the migration and lifecycle tests use to look inside PostgreSQL.

-- name: constraint_names(table_name)
-- Every constraint on one table, to prove a migration created the CHECKs it promises.
SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(:table_name) ORDER BY conname;

-- name: index_names(table_name)
SELECT indexname FROM pg_indexes WHERE tablename = :table_name ORDER BY indexname;

-- name: advisory_locks_held()$
-- Advisory locks anyone holds in this database: a runner must release its lock.
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory'
  AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database());

-- name: take_migration_lock(lock_key)$
-- Hold the runners' lock, so that runners started meanwhile all queue behind it.
SELECT pg_advisory_lock(:lock_key);

-- name: release_migration_lock(lock_key)$
SELECT pg_advisory_unlock(:lock_key);

-- name: sessions_waiting_for_a_lock(application_name)$
SELECT count(*) FROM pg_stat_activity
WHERE application_name = :application_name AND wait_event_type = 'Lock';

-- name: pretend_migration_was_edited(version)!
-- The recorded digest no longer matches the file: exactly what editing the file does.
UPDATE schema_migrations SET sha256 = repeat('0', 64) WHERE version = :version;

-- name: column_names(table_name)
SELECT attname FROM pg_attribute
WHERE attrelid = to_regclass(:table_name) AND attnum > 0 AND NOT attisdropped
ORDER BY attnum;

-- name: occupy_the_index_name()#
-- A table named like 001_init's index: its CREATE TABLE succeeds, then CREATE INDEX
-- fails, so the real migration breaks part-way through.
CREATE TABLE idx_last_accessed (occupied BOOLEAN);

-- name: server_version()$
SELECT current_setting('server_version');

-- name: insert_seed_row(user_id)!
-- A row as the TypeScript service stored it (the seed's columns only).
INSERT INTO user_sync_data (user_id, encrypted_blob, iv, timestamp, checksum, blob_size)
VALUES (:user_id, 'QQ==', 'MTIzNDU2Nzg5MGFi', 1, repeat('a', 64), 1);
