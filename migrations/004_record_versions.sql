-- A version per record for ETags and conditional requests (RFC 9110): a fresh random
-- UUID on every successful write, so a version is never reused, even after the record is
-- erased and created again, and reveals nothing about other users' activity.

ALTER TABLE user_sync_data
  ADD COLUMN version UUID NOT NULL DEFAULT gen_random_uuid();
