"""The shortest path through the service: store, fetch, verify, erase."""

from __future__ import annotations

import gc

from starlette.testclient import TestClient

from service.app import create_app
from tests.conftest import new_user_id, test_queries

PAYLOAD = {
    "encryptedBlob": "dGVzdCBibG9iIGRhdGE=",
    "iv": "MTIzNDU2Nzg5MGFi",
    "timestamp": 1698765432000,
    "checksum": "abc123def456abc123def456abc123def456abc123def456abc123def456abcd",
}


def test_a_stored_record_comes_back_and_can_be_erased(client, db):
    user_id = new_user_id()
    assert client.put(f"/api/sync/{user_id}", json=PAYLOAD).json() == {"success": True}
    assert client.get(f"/api/sync/{user_id}").json() == PAYLOAD
    assert client.post(f"/api/sync/{user_id}/verify").json() == {"exists": True}
    assert test_queries.raw_record(db, user_id=user_id) is not None
    assert client.delete(f"/api/sync/{user_id}").json() == {"success": True}
    assert client.get(f"/api/sync/{user_id}").status_code == 404
    assert test_queries.count_records(db) == 0


def test_start_up_objects_are_frozen_while_serving_and_released_at_shutdown(settings):
    """Full collections skip what start-up built (a measured p99 win, docs/benchmarks.md),
    and an app shut down in a long-lived process hands it back to the collector."""
    assert gc.get_freeze_count() == 0
    with TestClient(create_app(settings)) as client:
        assert gc.get_freeze_count() > 10_000
        assert client.get("/health/live").status_code == 200
    assert gc.get_freeze_count() == 0
