-- Statements that build and inspect the tests' Citus cluster (tests/citus/harness.py,
-- tests/citus/test_distribution.py); never used by the service. A `%%` is psycopg's
-- escape for a literal `%` (these statements always run with parameters through psycopg).

-- name: citus_create_extension()#
-- On every node, in every database the cluster serves (Citus's documented setup).
CREATE EXTENSION IF NOT EXISTS citus;

-- name: citus_set_coordinator(host, port)$
-- Tell the coordinator how the workers reach it (in the database's own metadata).
SELECT citus_set_coordinator_host(:host, CAST(:port AS integer));

-- name: citus_add_worker(host, port)$
-- Register a worker on the coordinator; returns its node id. Idempotent.
SELECT citus_add_node(:host, CAST(:port AS integer));

-- name: citus_workers()
-- The workers the coordinator routes to, as (host, port).
SELECT node_name, node_port FROM citus_get_active_worker_nodes() ORDER BY node_port;

-- name: citus_table_info(table_name)^
-- How Citus holds a table: its type ('distributed', 'reference', 'local'), its
-- distribution column and shard count; no row when Citus does not manage the table.
SELECT citus_table_type, distribution_column, shard_count
FROM citus_tables WHERE table_name = CAST(:table_name AS regclass);

-- name: citus_partition_column(table_name)$
-- The same fact from the catalog: the distribution column of a hash-distributed table.
SELECT column_to_column_name(logicalrelid, partkey)
FROM pg_dist_partition
WHERE logicalrelid = CAST(:table_name AS regclass) AND partmethod = 'h';

-- name: citus_rows_per_node(table_name)
-- Rows per worker, counted on each shard placement itself (not computed from hashes).
SELECT p.nodename, p.nodeport, sum(CAST(r.result AS bigint)) AS rows, count(*) AS shards
FROM run_command_on_placements(CAST(:table_name AS regclass), 'SELECT count(*) FROM %%s') AS r
JOIN pg_dist_shard_placement AS p USING (shardid, nodename, nodeport)
WHERE r.success
GROUP BY p.nodename, p.nodeport
ORDER BY p.nodeport;

-- name: citus_column_on_every_shard(table_name, column_name)$
-- Whether every shard placement of the table has the column (DDL propagated).
SELECT bool_and(r.success AND r.result = '1')
FROM run_command_on_placements(
  CAST(:table_name AS regclass),
  'SELECT count(*) FROM pg_attribute WHERE attrelid = ' || quote_literal('%%s')
    || '::regclass AND attname = ' || quote_literal(CAST(:column_name AS text))
    || ' AND NOT attisdropped'
) AS r;

-- name: citus_shell_table_bytes()$
-- The size of the coordinator's own (shell) user_sync_data: 0 once its rows live in shards.
SELECT pg_relation_size('user_sync_data');

-- name: citus_truncate_all()#
-- Empty the service's tables between tests: one statement, propagated to every shard.
TRUNCATE user_sync_data, rate_limit_hits;
