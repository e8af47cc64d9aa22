"""Connections that hold a descriptor and do nothing: idle sockets, slowloris headers, a
partial ICE-TCP frame. Each is closed after the first-request deadline, and nobody else
notices; over the per-source cap, connections are refused at once."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable

import aiohttp

from tests.e2e.harness import ServerProcess
from tests.reliability.conftest import media_keeps_flowing

#: sfu/guard.py's FIRST_REQUEST_TIMEOUT_S plus slack for a busy machine.
CLOSED_WITHIN_S = 20.0
IDLE_SOCKETS = 300


async def _closed_by_server(reader: asyncio.StreamReader, within_s: float) -> bool:
    try:
        async with asyncio.timeout(within_s):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


async def _health(server: ServerProcess) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/") as response:
        return response.status


async def _slowloris(port: int) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(1.0)
            if reader.at_eof() or time.monotonic() - started > CLOSED_WITHIN_S:
                break
        return await _closed_by_server(reader, 2.0)
    except ConnectionError:
        return True
    finally:
        writer.close()


async def test_idle_slow_and_partial_connections_are_closed(server: ServerProcess) -> None:
    async with media_keeps_flowing(server, "idle") as victim:
        since = time.monotonic()
        idle = [
            await asyncio.open_connection("127.0.0.1", server.port) for _ in range(IDLE_SOCKETS)
        ]
        reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
        writer.write(struct.pack("!H", 60_000) + b"\x00" * 30_000)  # a frame never finished
        slow = asyncio.get_running_loop().create_task(_slowloris(server.port))
        # Meanwhile the node serves: health check answers.
        assert await _health(server) == 200
        closed = await asyncio.gather(
            *(_closed_by_server(r, CLOSED_WITHIN_S) for r, _ in idle),
            _closed_by_server(reader, CLOSED_WITHIN_S),
        )
        assert all(closed), f"{closed.count(False)} connections still open"
        assert await slow, "slowloris headers were not cut off"
        for _, idle_writer in idle:
            idle_writer.close()
        writer.close()
        victim.assert_unharmed(since)


async def test_connections_over_the_per_source_cap_are_refused(
    start: Callable[..., ServerProcess],
) -> None:
    server = start("limit:\n  max_connections_per_source: 20\n")
    opened = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(30)]
    refused = await asyncio.gather(*(_closed_by_server(r, 1.0) for r, _ in opened))
    assert refused.count(True) == 10, refused
    assert "refusing connections from 127.0.0.1" in server.logs()
    for _, writer in opened:
        writer.close()
    await asyncio.sleep(0.2)
    assert await _health(server) == 200
