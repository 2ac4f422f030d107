-- GDPR cleanup (service/cleanup.py): erase records nobody has accessed for :inactive_days.
-- From psql: `logikids-sync sql erase_inactive_records inactive_days=730 batch_size=1000`.

-- name: erase_inactive_records(inactive_days, batch_size)^
-- Erase one batch of the oldest inactive records; answers how many went and how many
-- were chosen (a full batch means there may be more, even when some were kept). The batch is
-- found through idx_last_accessed (oldest first, LIMIT); each batch is one short statement
-- that locks only its own rows. The DELETE checks last_accessed again: a row a request
-- is writing meanwhile is waited for (one short statement) and then re-checked as it is
-- now, so a record read or stored during the cleanup is kept. No FOR UPDATE SKIP LOCKED:
-- Citus refuses row locks in a statement over many shards, and this form runs there too
-- (the batch is chosen first, then deleted on every shard that holds part of it).
WITH batch AS (
  SELECT user_id FROM user_sync_data
  WHERE last_accessed < now() - make_interval(days => :inactive_days)
  ORDER BY last_accessed
  LIMIT :batch_size
),
erased AS (
  DELETE FROM user_sync_data
  WHERE user_id IN (SELECT user_id FROM batch)
    AND last_accessed < now() - make_interval(days => :inactive_days)
  RETURNING 1
)
SELECT (SELECT count(*) FROM erased) AS erased, (SELECT count(*) FROM batch) AS chosen;

-- name: count_inactive_records(inactive_days)$
-- What `cleanup --dry-run` reports: the records a cleanup would erase now.
SELECT count(*) FROM user_sync_data
WHERE last_accessed < now() - make_interval(days => :inactive_days);

-- name: try_cleanup_lock(lock_key)$
-- Session advisory lock, without waiting: true for the one replica that runs the cleanup,
-- false for the others, which skip this round.
SELECT pg_try_advisory_lock(:lock_key);

-- name: release_cleanup_lock(lock_key)$
-- Give the lock back on the same session that took it (true when it was held).
SELECT pg_advisory_unlock(:lock_key);
