"""tests/test_cleanup.py on the Citus cluster (fixtures: tests/citus/conftest.py)."""

from tests.test_cleanup import *  # noqa: F403

CITUS_SKIPS: dict[str, str] = {}
"""Tests of tests/test_cleanup.py that do not apply on Citus, with the reason."""
