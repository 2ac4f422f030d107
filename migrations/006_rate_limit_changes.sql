-- When each count last changed, so that every process can learn, at its exchange, the
-- buckets the other processes counted lately, including ones it has never seen
-- (service/ratelimit.py).

ALTER TABLE rate_limit_hits ADD COLUMN changed_at TIMESTAMPTZ NOT NULL DEFAULT now();

CREATE INDEX idx_rate_limit_hits_changed ON rate_limit_hits (changed_at);
