"""Scenario 5: hostile clients. Slow-drip connections (headers or bodies a byte at a
time), bodies far over the limit, bodies whose Content-Length lies, and bytes that are
not HTTP at all.

Proves: 200 slow-drip connections do not stop another client from being served quickly;
a trickled body is cut off with 408 after REQUEST_BODY_TIMEOUT; an oversized body is
refused with 413 before it is read (declared) or as soon as it crosses the limit
(chunked); a lying Content-Length costs the liar a 400 or a 408, not the server its
memory; malformed HTTP gets a 400 from the server, which keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest

from tests.faults import rawhttp
from tests.faults.harness import Report, Service
from tests.faults.load import Ledger, http_client, new_payload, run_load, summarize

pytestmark = pytest.mark.faults

BODY_TIMEOUT = 4.0
SERVICE_ENV = {"REQUEST_BODY_TIMEOUT": str(BODY_TIMEOUT), "RATE_LIMIT_PER_HOUR": "0"}
DRIPPERS = 100
"""Connections of each kind: DRIPPERS trickle headers, DRIPPERS trickle bodies."""
DRIP_EVERY = 0.2
DRIP_FOR = 8.0
SERVED_WITHIN = 1.0
"""Slowest answer the well-behaved client may get while the drippers are connected."""
MAX_BODY = 1_500_000


async def drip_headers(port: int) -> dict[str, object]:
    """A request line, then header bytes one at a time, never finishing the headers."""
    reader, writer = await rawhttp.connect(port)
    head = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: " + b"a" * 1000
    sent = 0
    status = None
    try:
        deadline = time.monotonic() + DRIP_FOR
        while time.monotonic() < deadline and sent < len(head):
            writer.write(head[sent : sent + 1])
            await writer.drain()
            sent += 1
            with contextlib.suppress(TimeoutError):
                status = await rawhttp.read_status(reader, within=DRIP_EVERY)
                break
        still_open = status is None and not reader.at_eof()
    except ConnectionError:
        still_open = False
    finally:
        await rawhttp.close(writer)
    return {"status": status, "still_open": still_open}


async def drip_body(port: int) -> dict[str, object]:
    """Complete headers of a valid PUT, then its body one byte at a time."""
    body = rawhttp.json_body(new_payload(blob_bytes=300))
    reader, writer = await rawhttp.connect(port)
    writer.write(rawhttp.put_request(str(uuid.uuid4()), body))
    await writer.drain()
    began = time.monotonic()
    status = None
    try:
        for i in range(len(body)):
            if time.monotonic() - began > DRIP_FOR:
                break
            writer.write(body[i : i + 1])
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                status = await rawhttp.read_status(reader, within=DRIP_EVERY)
                break
    except ConnectionError:
        pass
    finally:
        await rawhttp.close(writer)
    return {"status": status, "after_s": round(time.monotonic() - began, 2)}


async def slow_drip_attack(service: Service) -> dict[str, object]:
    drippers = [asyncio.create_task(drip_headers(service.port)) for _ in range(DRIPPERS)]
    drippers += [asyncio.create_task(drip_body(service.port)) for _ in range(DRIPPERS)]
    await asyncio.sleep(1)
    ledger = Ledger()
    async with http_client(service.base_url, connections=4) as client:
        began = time.monotonic()
        await run_load(
            client, ledger, stop=lambda: time.monotonic() - began > DRIP_FOR - 2,
            workers=2, max_requests=2000,
        )  # fmt: skip
    results = await asyncio.gather(*drippers)
    return {
        "good_client": ledger.outcomes,
        "headers": results[:DRIPPERS],
        "bodies": results[DRIPPERS:],
    }


def test_slow_drip_clients_do_not_stop_others_from_being_served(
    running_cluster, launch, report: Report
):
    service = launch(running_cluster.create_database(), **SERVICE_ENV)
    service.wait_ready()

    run = asyncio.run(slow_drip_attack(service))

    good = run["good_client"]
    bodies = run["bodies"]
    headers = run["headers"]
    report.record(
        "5a_slow_drip_clients",
        {
            "drip_connections": 2 * DRIPPERS,
            "good_client": summarize(good),
            "body_drippers_status": _tally(str(b["status"]) for b in bodies),
            "body_drippers_cut_after_s_max": max(b["after_s"] for b in bodies),
            "header_drippers_status": _tally(str(h["status"]) for h in headers),
            "header_drippers_still_open_after_s": DRIP_FOR,
            "header_drippers_still_open": sum(1 for h in headers if h["still_open"]),
        },
    )
    assert len(good) >= 50 and all(o.status == 200 for o in good), summarize(good)
    assert max(o.latency for o in good) <= SERVED_WITHIN, summarize(good)
    assert all(b["status"] == 408 for b in bodies), bodies[:5]
    assert max(b["after_s"] for b in bodies) <= BODY_TIMEOUT + 2.0
    assert service.process.poll() is None


async def oversized_and_lying(service: Service) -> dict[str, dict[str, object]]:
    port = service.port
    user = str(uuid.uuid4())
    results: dict[str, dict[str, object]] = {}

    # Declared far over the limit: refused before a byte of the body is sent.
    reader, writer = await rawhttp.connect(port)
    began = time.monotonic()
    writer.write(rawhttp.put_request(user, b"", content_length=100_000_000))
    await writer.drain()
    status = await rawhttp.read_status(reader, within=5)
    results["declared_100MB"] = {"status": status, "answered_s": _since(began)}
    await rawhttp.close(writer)

    # Chunked, no length, 8 MB streamed: refused once past the limit.
    reader, writer = await rawhttp.connect(port)
    writer.write(
        f"PUT /api/sync/{user} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    chunk = b"a" * 65536
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    answer = asyncio.create_task(rawhttp.read_status(reader, within=30))
    sent = 0
    began = time.monotonic()
    with contextlib.suppress(ConnectionError):
        while sent < 8_000_000 and not answer.done():
            writer.write(framed)
            await writer.drain()
            sent += len(chunk)
            await asyncio.sleep(0.005)
    status = await answer
    results["chunked_8MB"] = {
        "status": status,
        "body_bytes_sent_before_answer": sent,
        "answered_s": _since(began),
    }
    await rawhttp.close(writer)

    # Content-Length says 50, 2 MB follow: the 50 bytes are not JSON (400), and what
    # follows is not HTTP (the server says 400 again, or hangs up).
    body = rawhttp.json_body(new_payload(blob_bytes=1500))
    reader, writer = await rawhttp.connect(port)
    writer.write(rawhttp.put_request(user, body, content_length=50) + body + b"x" * 2_000_000)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    first, rest = await rawhttp.read_response(reader, within=5)
    results["length_says_50_sends_2MB"] = {
        "status": first,
        "then": "400" if b"HTTP/1.1 400" in rest else "closed",
    }
    await rawhttp.close(writer)

    # Content-Length says 1,000,000, 20 bytes follow, then nothing: 408 after the
    # body timeout, not a connection held forever.
    reader, writer = await rawhttp.connect(port)
    writer.write(rawhttp.put_request(user, b"", content_length=1_000_000) + b'{"encryptedBlob": "')
    await writer.drain()
    began = time.monotonic()
    status = await rawhttp.read_status(reader, within=BODY_TIMEOUT + 10)
    results["length_says_1MB_sends_20B"] = {"status": status, "answered_s": _since(began)}
    await rawhttp.close(writer)
    return results


def test_oversized_and_lying_bodies_are_refused_early(running_cluster, launch, report: Report):
    service = launch(running_cluster.create_database(), **SERVICE_ENV)
    service.wait_ready()
    rss_before = service.rss_mb()

    results = asyncio.run(oversized_and_lying(service))

    rss_after = service.rss_mb()
    report.record(
        "5b_oversized_and_lying_bodies",
        {**results, "rss_before_mb": round(rss_before, 1), "rss_after_mb": round(rss_after, 1)},
    )
    assert results["declared_100MB"]["status"] == 413
    assert results["declared_100MB"]["answered_s"] < 1.0
    chunked = results["chunked_8MB"]
    assert chunked["status"] == 413
    assert chunked["body_bytes_sent_before_answer"] < MAX_BODY + 1_000_000, chunked
    assert results["length_says_50_sends_2MB"]["status"] == 400
    lying_long = results["length_says_1MB_sends_20B"]
    assert lying_long["status"] == 408
    assert BODY_TIMEOUT - 0.5 <= lying_long["answered_s"] <= BODY_TIMEOUT + 2.0
    assert rss_after - rss_before < 50, (rss_before, rss_after)
    service.wait_ready(timeout=5)


MALFORMED = {
    "not_http": b"GARBAGE\r\n\r\n",
    "tls_client_hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32,
    "bad_content_length": b"GET /health/live HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "two_content_lengths": (
        b"PUT /health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Content-Length: 6\r\n\r\nhello!"
    ),
    "header_without_colon": b"GET /health/live HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    "bad_chunk_size": (
        b"PUT /api/sync/00000000-0000-0000-0000-000000000000 HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n"
    ),
    "nul_in_target": b"GET /health\x00/live HTTP/1.1\r\nHost: x\r\n\r\n",
    "unknown_version": b"GET /health/live HTTP/7.0\r\nHost: x\r\n\r\n",
    "space_in_header_name": b"GET /health/live HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
}


async def send_malformed(service: Service) -> dict[str, object]:
    results: dict[str, object] = {}
    for name, raw in MALFORMED.items():
        reader, writer = await rawhttp.connect(service.port)
        try:
            writer.write(raw)
            await writer.drain()
            results[name] = await rawhttp.read_status(reader, within=5)
        except (ConnectionError, TimeoutError) as exc:
            results[name] = type(exc).__name__
        finally:
            await rawhttp.close(writer)
    return results


def test_malformed_http_gets_400_from_the_server_and_it_keeps_serving(
    running_cluster, launch, report: Report
):
    service = launch(running_cluster.create_database(), **SERVICE_ENV)
    service.wait_ready()

    results = asyncio.run(send_malformed(service))

    report.record("5c_malformed_http", results)
    assert results == {name: 400 for name in MALFORMED}, results
    service.wait_ready(timeout=5)


async def hang_up_mid_body(service: Service) -> None:
    """Half a PUT body, then the client goes away (a phone losing its network)."""
    body = rawhttp.json_body(new_payload(blob_bytes=5000))
    _, writer = await rawhttp.connect(service.port)
    writer.write(rawhttp.put_request(str(uuid.uuid4()), body) + body[: len(body) // 2])
    await writer.drain()
    await asyncio.sleep(0.3)
    await rawhttp.close(writer)
    await asyncio.sleep(0.5)


def test_a_client_hanging_up_mid_body_is_not_a_server_error(running_cluster, launch):
    service = launch(running_cluster.create_database(), **SERVICE_ENV)
    service.wait_ready()

    asyncio.run(hang_up_mid_body(service))

    logs = service.logs()
    service.wait_ready(timeout=5)
    assert "Traceback" not in logs, logs
    assert not [line for line in logs.splitlines() if " 500 " in line or "ERROR" in line], logs


def _since(began: float) -> float:
    return round(time.monotonic() - began, 3)


def _tally(values) -> dict[str, int]:
    tally: dict[str, int] = {}
    for value in values:
        tally[value] = tally.get(value, 0) + 1
    return tally
