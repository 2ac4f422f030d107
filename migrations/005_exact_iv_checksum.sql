-- VARCHAR(n) silently truncates trailing spaces on assignment, before any CHECK runs, so
-- an iv of 16 valid characters plus spaces was stored cut down instead of refused. As TEXT
-- the CHECK patterns (which already fix the lengths) see the whole value and refuse it,
-- the same as the API does. TEXT and VARCHAR share a storage format: no table rewrite.

ALTER TABLE user_sync_data
  ALTER COLUMN iv TYPE TEXT,
  ALTER COLUMN checksum TYPE TEXT;
