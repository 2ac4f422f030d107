-- Statements of the migration runner (service/migrations.py).

-- name: create_migrations_table()#
-- Where applied migrations are recorded, with the SHA-256 of the file as applied.
CREATE TABLE IF NOT EXISTS schema_migrations (
  version TEXT PRIMARY KEY,
  sha256 CHAR(64) NOT NULL,
  applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- name: lock_migrations(lock_key)$
-- Session-level advisory lock: replicas starting together apply each migration once.
SELECT pg_advisory_lock(:lock_key);

-- name: unlock_migrations(lock_key)$
SELECT pg_advisory_unlock(:lock_key);

-- name: applied_migrations()
-- Every applied migration, oldest first.
SELECT version, sha256, applied_at FROM schema_migrations ORDER BY version;

-- name: record_migration(version, sha256)!
INSERT INTO schema_migrations (version, sha256) VALUES (:version, :sha256);

-- name: migrations_table_exists()$
-- Lets `migrate --status` report on a fresh database without creating anything.
SELECT to_regclass('schema_migrations') IS NOT NULL;

-- name: seed_schema_present()$
-- Whether user_sync_data exists: a database set up by the TypeScript service's
-- docker-entrypoint-initdb.d has the seed schema (001) but no schema_migrations.
SELECT to_regclass('user_sync_data') IS NOT NULL;

-- name: set_lock_timeout(milliseconds)$
-- Bound how long the runner waits for the advisory lock (and its DDL for table locks):
-- a replica stuck while holding the lock must not hang every other replica's start-up.
SELECT set_config('lock_timeout', CAST(:milliseconds AS text), false);
