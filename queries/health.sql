-- Statements for start-up and health checks.

-- name: server_info()^
-- Identify the server once at start-up, for the "connected" log line and the check of
-- the oldest PostgreSQL release the service supports (15).
SELECT current_setting('server_version') AS server_version, current_database() AS database,
       CAST(current_setting('server_version_num') AS integer) AS server_version_num;

-- name: ping()$
-- Cheapest statement that proves the database answers (readiness probe).
SELECT 1;
