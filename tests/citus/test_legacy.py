"""tests/test_legacy.py on the Citus cluster (fixtures: tests/citus/conftest.py)."""

from tests.test_legacy import *  # noqa: F403

CITUS_SKIPS: dict[str, str] = {}
"""Tests of tests/test_legacy.py that do not apply on Citus, with the reason."""
