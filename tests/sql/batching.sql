-- Statements tests/test_batching.py hands to the statement batcher.

-- name: batching_sleep(seconds)$
-- Hold a batch's connection for a while.
SELECT pg_sleep(:seconds);

-- name: batching_one()$
SELECT 1;

-- name: batching_backend_pid()$
-- The server process behind the connection: tells pooled connections apart.
SELECT pg_backend_pid();

-- name: batching_length(text)$
-- A statement with a parameter of a chosen size.
SELECT length(:text);

-- name: batching_divide(divisor)$
-- Fails with division_by_zero when :divisor is 0: an error of another class.
SELECT 1 / CAST(:divisor AS integer);

-- name: batching_terminate_other_sessions()!
-- Break every other connection to this database, as a crash would.
SELECT pg_terminate_backend(pid) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid();
