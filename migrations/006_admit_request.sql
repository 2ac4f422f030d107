-- Rate-limit counting as a function, so that each sync statement counts its own request:
-- one statement and one round trip per request instead of two (BENCHMARKS.md measured the
-- separate count at about 40% of the service's throughput). PL/pgSQL, not SQL, because
-- PL/pgSQL keeps the INSERT's plan for the session; a SQL function would plan it on
-- every call.
--
-- Adds one hit to each bucket's current fixed window (:window_seconds long) and answers
-- in one row: whether every bucket is still within its limit, the new count per bucket
-- (in the order of `buckets`), and the seconds left in the window. No buckets (an empty
-- array or NULL: limiting is off) counts nothing and admits. The upsert takes the row
-- lock until the calling statement ends, so concurrent requests each see a distinct
-- count and exactly the limit gets through.

CREATE FUNCTION admit_request(buckets text[], limits integer[], window_seconds integer)
RETURNS TABLE (admitted boolean, hits integer[], reset_seconds integer)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
  WITH counted AS (
    INSERT INTO rate_limit_hits AS h (bucket, window_start, hits)
    SELECT b.bucket,
           to_timestamp(floor(extract(epoch FROM now()) / window_seconds) * window_seconds),
           1
    FROM unnest(buckets) AS b(bucket)
    ON CONFLICT (bucket, window_start) DO UPDATE SET hits = h.hits + 1
    RETURNING h.bucket, h.hits,
              ceil(extract(epoch FROM h.window_start) + window_seconds
                   - extract(epoch FROM now()))::integer AS reset_seconds
  )
  SELECT coalesce(bool_and(c.hits <= l.lim), true),
         array_agg(c.hits ORDER BY l.i),
         max(c.reset_seconds)
  FROM unnest(buckets, limits) WITH ORDINALITY AS l(bucket, lim, i)
  JOIN counted AS c ON c.bucket = l.bucket;
END
$$;
