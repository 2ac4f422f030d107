"""The fault-injection suite (`make test-faults`): real service processes, a PostgreSQL
cluster the tests crash and restart, real HTTP clients. docs/reliability.md says what it proved."""
