-- Statements tests/test_contract.py uses (never used by the service). conftest's
-- `test_queries` loads every file in this directory, so these names must stay unique.

-- name: contract_clock()$
-- The server's wall clock now, not the transaction's: a value the service's next statement
-- cannot precede, so "last_accessed was set to now" needs no assumption about timing.
SELECT clock_timestamp();
