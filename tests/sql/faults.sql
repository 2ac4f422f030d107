-- Statements the fault-injection suite (tests/faults) uses to hold locks and to read back
-- what PostgreSQL kept (never used by the service). conftest's `test_queries` loads every
-- file in this directory, so these names must stay unique.

-- name: faults_stored_payloads()
-- The four client fields of every record, to compare byte for byte with what clients
-- were told was stored.
SELECT user_id::text AS user_id, encrypted_blob, iv, timestamp, checksum
FROM user_sync_data;

-- name: faults_lock_records()#
-- Run inside an open transaction on a connection of its own: every request that touches
-- the records queues behind this lock until that transaction ends, as behind a slow
-- migration or a runaway batch job.
LOCK TABLE user_sync_data IN ACCESS EXCLUSIVE MODE;

-- name: faults_migration_counts()
-- How many times each migration was recorded (each must be exactly once).
SELECT version, count(*) AS times FROM schema_migrations GROUP BY version ORDER BY version;

-- name: faults_sessions_of(application_name)
-- The sessions an application holds, with their state, to show what a shutdown left.
SELECT pid, state, backend_type FROM pg_stat_activity
WHERE application_name = :application_name;
