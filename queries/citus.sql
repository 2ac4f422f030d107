-- Citus (distributed PostgreSQL; docs/operations.md): after the migrations, the runner
-- (service/migrations.py distribute_on_citus) spreads user_sync_data over the workers by
-- user_id, so each request's statement runs on the one shard of its user. Every statement
-- but citus_installed runs only where the citus extension is installed: the functions and
-- views they name exist nowhere else.

-- name: citus_installed()$
-- Whether the citus extension is installed in this database (plain PostgreSQL: false).
SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus');

-- name: citus_worker_count()$
-- Workers registered with this coordinator that queries can be routed to.
SELECT count(*) FROM citus_get_active_worker_nodes();

-- name: citus_distributed(table_name)$
-- Whether Citus already distributes the table (by any column): its row in pg_dist_partition
-- with a hash distribution ('h'); a reference or Citus-local table does not count.
SELECT EXISTS (
  SELECT FROM pg_dist_partition
  WHERE logicalrelid = CAST(:table_name AS regclass) AND partmethod = 'h'
);

-- name: citus_distribute_user_sync_data()$
-- Spread user_sync_data over the workers in shards by user_id (Citus's default shard count,
-- citus.shard_count). Rows already in the table are copied into the shards.
SELECT create_distributed_table('user_sync_data', 'user_id');

-- name: citus_truncate_local_user_sync_data()$
-- After distributing a table that held rows, the coordinator's own copy of them stays on
-- disk though no query sees it any more; this removes it (Citus's documented follow-up).
SELECT truncate_local_data_after_distributing_table('user_sync_data');
