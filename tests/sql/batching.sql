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

-- name: batching_types(b, i, t, u, ts, a, f)^
-- Every parameter type the batcher encodes, answered in every column type it decodes.
SELECT CAST(:b AS boolean), CAST(:i AS bigint), CAST(:t AS text), CAST(:u AS uuid),
       CAST(:ts AS timestamptz), cardinality(CAST(:a AS uuid[])), CAST(:f AS float8),
       CAST(:t AS varchar);

-- name: batching_prepared_here()$
-- How many of the batcher's statements this connection has prepared.
SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'lks\_%';

-- name: batching_deallocate_all()!
-- Drop this connection's prepared statements behind the batcher's back (as PgBouncer's
-- server_reset_query or a DISCARD ALL would).
DEALLOCATE ALL;

-- name: batching_missing_table()$
-- Fails when it is parsed: a Parse error inside a batch.
SELECT count(*) FROM no_such_table;
