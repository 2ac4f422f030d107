"""Inputs that must never become a 500 or leak a secret: a client that hangs up mid-upload,
a trickling body, and a DATABASE_URL libpq cannot parse."""

from __future__ import annotations

from typing import Any

import pytest

from service.config import ConfigError, Settings
from tests.asgi import call_app, put_scope, status_of
from tests.conftest import new_user_id


def test_a_client_hanging_up_mid_upload_is_499_not_a_server_error(client, caplog):
    messages = iter([{"type": "http.request", "body": b'{"encryptedBlob": "QQ', "more_body": True}])

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    assert (
        status_of(call_app(client, put_scope(client, f"/api/sync/{new_user_id()}"), receive)) == 499
    )
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_body_trickling_past_the_body_timeout_is_408(settings):
    from starlette.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings.with_changes(body_timeout=0.3))) as client:

        async def receive() -> dict[str, Any]:
            import anyio

            await anyio.sleep(0.2)
            return {"type": "http.request", "body": b" ", "more_body": True}

        assert (
            status_of(call_app(client, put_scope(client, f"/api/sync/{new_user_id()}"), receive))
            == 408
        )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:s3cr%zzet@127.0.0.1:1/db",
        "postgresql://u:s3cret@[::1/db",
        "host=127.0.0.1 password='s3cret",
    ],
)
def test_an_unparsable_database_url_is_refused_without_showing_the_password(url):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"DATABASE_URL": url})
    assert "DATABASE_URL" in str(refused.value)
    assert "s3cr" not in str(refused.value)


def test_a_put_beyond_the_upload_memory_budget_is_503_and_the_budget_frees(settings):
    """Bodies in progress may hold UPLOAD_BUFFER_MB of memory (2 bytes per body byte):
    with 4 MB, one declared 1.4 MB body in progress leaves no room for a second one."""
    import base64
    import hashlib

    import anyio
    from starlette.testclient import TestClient

    from service.app import create_app
    from tests.test_smoke import PAYLOAD

    blob = bytes(1_000_000)
    big = {
        **PAYLOAD,
        "encryptedBlob": base64.b64encode(blob).decode(),
        "checksum": hashlib.sha256(blob).hexdigest(),
    }
    with TestClient(create_app(settings.with_changes(upload_buffer_mb=4))) as client:
        pending = iter([b"x" * 1_400_000])

        async def slow_receive() -> dict[str, Any]:
            await anyio.sleep(1.0)
            return {"type": "http.request", "body": next(pending, b""), "more_body": False}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = put_scope(client, f"/api/sync/{new_user_id()}")
        scope["headers"].append((b"content-length", b"1400000"))
        slow = client.portal.start_task_soon(client.app, scope, slow_receive, send)
        busy = client.put(f"/api/sync/{new_user_id()}", json=big)
        assert busy.status_code == 503
        assert busy.json() == {"error": "Service unavailable"}
        assert "Retry-After" in busy.headers
        small = client.put(f"/api/sync/{new_user_id()}", json=PAYLOAD)
        assert small.status_code == 200  # a small body still fits beside it
        slow.result(timeout=10)
        assert status_of(sent) == 400  # its junk body, read to the end, is not JSON
        assert client.put(f"/api/sync/{new_user_id()}", json=big).status_code == 200
