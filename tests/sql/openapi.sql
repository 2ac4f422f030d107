-- Statements for tests/test_openapi.py.

-- name: erase_all_records()!
-- Each stateful scenario starts from an empty table, so Hypothesis can replay it exactly.
DELETE FROM user_sync_data;
