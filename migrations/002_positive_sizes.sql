-- The API refuses empty blobs and timestamps below 1 (docs/protocol.md); say the same in the
-- database so that the app's rules and the CHECK constraints agree in both directions.

ALTER TABLE user_sync_data
  ADD CONSTRAINT blob_size_positive CHECK (blob_size >= 1),
  ADD CONSTRAINT timestamp_positive CHECK (timestamp >= 1);
