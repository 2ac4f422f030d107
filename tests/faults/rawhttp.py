"""HTTP/1.1 over raw asyncio streams, for clients no library would be: ones that trickle
bytes, lie about lengths, or send what is not HTTP at all. Only 127.0.0.1 is ever dialled."""

from __future__ import annotations

import asyncio
import contextlib
import json


def put_request(user_id: str, body: bytes, *, content_length: int | None = None) -> bytes:
    """The head of a PUT whose Content-Length says `content_length` (default: the truth)."""
    length = len(body) if content_length is None else content_length
    return (
        f"PUT /api/sync/{user_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def json_body(payload: dict[str, object]) -> bytes:
    return json.dumps(payload).encode()


async def connect(port: int, *, within: float = 5.0):
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), within)


async def read_status(reader: asyncio.StreamReader, *, within: float) -> int | None:
    """The status of the response, or None when the server closed without one."""
    line = await asyncio.wait_for(reader.readline(), within)
    parts = line.split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


async def read_response(reader: asyncio.StreamReader, *, within: float) -> tuple[int | None, bytes]:
    """Status and everything the server sent until it closed or fell silent."""
    status = await read_status(reader, within=within)
    rest = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        while len(rest) < 1 << 16:
            chunk = await asyncio.wait_for(reader.read(4096), 0.5)
            if not chunk:
                break
            rest += chunk
    return status, rest


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 2)


async def try_new_connection(port: int) -> str:
    """What a new client meets: 'refused', 'served <status>', or what went wrong after
    the TCP handshake ('reset', 'closed without answer', 'no answer')."""
    try:
        reader, writer = await connect(port, within=2)
    except ConnectionRefusedError:
        return "refused"
    except (OSError, TimeoutError) as exc:
        return f"connect {type(exc).__name__}"
    try:
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        status = await read_status(reader, within=3)
        return f"served {status}" if status else "closed without answer"
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "no answer"
    except OSError as exc:
        return type(exc).__name__
    finally:
        await close(writer)
