-- Request counters for the rate limits (service/ratelimit.py), shared by every worker and
-- replica. UNLOGGED: no WAL per request, and losing the counts in a crash only means a
-- fresh window for everyone, which is acceptable for an abuse limit.

CREATE UNLOGGED TABLE rate_limit_hits (
  bucket TEXT NOT NULL,                 -- 'user:<uuid>' or 'ip:<address>'
  window_start TIMESTAMPTZ NOT NULL,    -- start of the fixed window this count belongs to
  hits INTEGER NOT NULL,
  PRIMARY KEY (bucket, window_start)
);

-- Purging old windows scans by age.
CREATE INDEX idx_rate_limit_hits_window ON rate_limit_hits (window_start);
