-- Statements behind the metrics (service/metrics.py).

-- name: count_records()$
-- Records stored, for the logikids_sync_records gauge; refreshed once a minute, and only
-- when metrics are on. The heap is small (blobs live in TOAST), so the scan is cheap.
SELECT count(*) FROM user_sync_data;
