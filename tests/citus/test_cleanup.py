"""tests/test_cleanup.py on the Citus cluster (fixtures: tests/citus/conftest.py)."""

from tests.test_cleanup import *  # noqa: F403

CITUS_SKIPS: dict[str, str] = {
    "test_the_batch_statement_finds_old_records_through_idx_last_accessed": (
        "its 5,005 rows are about 156 per shard over 32 shards, where the index scan and a "
        "seq scan cost nearly the same, so the plan EXPLAIN shows for one shard is a coin "
        "toss (a CI run once got the seq scan); the index plan is checked on plain "
        "PostgreSQL"
    ),
}
"""Tests of tests/test_cleanup.py that do not apply on Citus, with the reason."""
