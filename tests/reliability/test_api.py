"""Heavy or malformed server API requests get clear Twirp errors, never block the event loop
for long or take the node's memory (issue 14, findings 6 and 8); a Redis that answers nothing
ends start-up with one clear line (finding 7)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import subprocess
import threading
import time

import aiohttp
from livekit import api
from livekit.protocol import room as room_proto

from tests.e2e.harness import API_KEY, API_SECRET, SERVER_SCRIPT, ServerProcess, free_port
from tests.reliability.conftest import media_keeps_flowing

_PATH = "/twirp/livekit.RoomService/ListRooms"


def _admin_token() -> str:
    grants = api.VideoGrants(room_list=True, room_admin=True, room_create=True)
    return str(api.AccessToken(API_KEY, API_SECRET).with_grants(grants).to_jwt())


async def _post(
    http: aiohttp.ClientSession, server: ServerProcess, body: bytes, content_type: str
) -> tuple[int, dict[str, str]]:
    headers = {"Authorization": f"Bearer {_admin_token()}", "Content-Type": content_type}
    data = io.BytesIO(body)  # aiohttp warns about large raw bytes
    async with http.post(server.http_url + _PATH, data=data, headers=headers) as response:
        return response.status, json.loads(await response.read())


async def test_malformed_and_heavy_requests(server: ServerProcess) -> None:
    async with media_keeps_flowing(server, "api") as victim, aiohttp.ClientSession() as http:
        since = time.monotonic()
        status, error = await _post(http, server, b"null", "application/json")
        assert (status, error["code"]) == (400, "malformed")
        assert "NoneType" not in error["msg"] and "ListRoomsRequest" in error["msg"]
        status, error = await _post(http, server, b'{"names": 3}', "application/json")
        assert (status, error["code"]) == (400, "malformed")
        names = json.dumps({"names": [f"r{i}" for i in range(200_000)]}).encode()
        started = time.monotonic()
        status, error = await _post(http, server, names, "application/json")
        assert (status, error["code"]) == (400, "invalid_argument")
        assert time.monotonic() - started < 1.5
        request = room_proto.ListRoomsRequest(names=[f"r{i}" for i in range(2000)])
        status, error = await _post(
            http, server, request.SerializeToString(), "application/protobuf"
        )
        assert (status, error["code"]) == (400, "invalid_argument")
        # Twenty 5 MB bodies at once: a few are read, the rest refused at once.
        big = b'{"names": ["' + b"x" * 5_000_000 + b'"]}'
        results = await asyncio.gather(
            *(_post(http, server, big, "application/json") for _ in range(20))
        )
        refused = [error for status, error in results if status != 200]
        assert all(error["code"] == "resource_exhausted" for error in refused), refused
        assert refused, "twenty large bodies at once are not all read at once"
        victim.assert_unharmed(since)


def test_a_redis_that_never_answers_ends_start_up_with_one_line() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_say_nothing() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
    thread.start()
    redis_port = listener.getsockname()[1]
    env = {"LIVEKIT_RTC_TCP_PORT": str(free_port()), "PATH": "/usr/bin:/bin"}
    try:
        result = subprocess.run(
            [
                SERVER_SCRIPT, "--workers", "1", "--port", str(free_port()),
                "--keys", f"{API_KEY}: {API_SECRET}",
                "--config-body", f"redis:\n  address: 127.0.0.1:{redis_port}\n",
            ],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()
    assert result.returncode == 1, result.stderr
    assert "cannot reach the cluster's Redis" in result.stderr
    assert "Traceback" not in result.stderr
