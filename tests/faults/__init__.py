"""The fault-injection suite (`make test-faults`): real service processes, a PostgreSQL
cluster the tests crash and restart, real HTTP clients. RELIABILITY.md says what it proved."""
