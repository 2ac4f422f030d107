-- Statements for start-up and health checks.

-- name: server_info()^
-- Identify the server once at start-up, for the "connected" log line.
SELECT current_setting('server_version') AS server_version, current_database() AS database;

-- name: ping()$
-- Cheapest statement that proves the database answers (readiness probe).
SELECT 1;
