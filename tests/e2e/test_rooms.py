"""Room lifecycle and limits from the configuration, seen through the real SDK."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest
from livekit import rtc

from tests.e2e.harness import ServerProcess, make_token
from tests.e2e.sdk import EventLog, connect, joined, wait_until

pytestmark = pytest.mark.sdk
Start = Callable[..., ServerProcess]


async def _validate_status(server: ServerProcess, token: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_url}/rtc/validate?access_token={token}") as response:
            return response.status


async def test_room_closes_after_departure_timeout(start: Start) -> None:
    server = start("room:\n  auto_create: false\n  departure_timeout: 1\n")
    creator_token_grants = {"room_create": True}
    async with joined(server, "first", "short", **creator_token_grants) as first:
        sid = await first.sid
    # Rejoining within the departure timeout finds the same room.
    async with joined(server, "again", "short") as again:
        assert await again.sid == sid
    await asyncio.sleep(2.5)
    # After it, the room is gone: without roomCreate the join is refused with 404.
    assert await _validate_status(server, make_token("late", "short")) == 404
    async with joined(server, "creator", "short", **creator_token_grants) as creator:
        assert await creator.sid != sid


async def test_auto_create_off_refuses_unknown_rooms(start: Start) -> None:
    server = start("room:\n  auto_create: false\n")
    assert await _validate_status(server, make_token("x", "nowhere")) == 404
    with pytest.raises(rtc.ConnectError):
        await connect(server, "x", "nowhere")


async def test_max_participants(start: Start) -> None:
    server = start("room:\n  max_participants: 1\n")
    async with joined(server, "only", "tiny"):
        assert await _validate_status(server, make_token("second", "tiny")) == 500
        with pytest.raises(rtc.ConnectError):
            await connect(server, "second", "tiny")
        # The same identity replaces the old session rather than counting twice.
        assert await _validate_status(server, make_token("only", "tiny")) == 200


async def test_hidden_participant_is_invisible(server: ServerProcess) -> None:
    async with joined(server, "visible", "hide") as visible:
        async with joined(server, "ghost", "hide", hidden=True) as ghost:
            await wait_until(lambda: "visible" in ghost.remote_participants)
            await asyncio.sleep(0.5)
            assert "ghost" not in visible.remote_participants
            received: list[rtc.DataPacket] = []
            visible.on("data_received", received.append)
            await ghost.local_participant.publish_data(b"boo")
            await wait_until(lambda: bool(received))
            # Hidden senders are not named (LiveKit blanks their identity).
            assert received[0].participant is None


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # dev's "secret"
async def test_dev_mode_from_the_readme(start: Start) -> None:
    # `livekit-py-server --dev` as the README runs it: placeholder keys devkey/secret, bound to
    # 127.0.0.1, advertising a loopback candidate without any node_ip.
    server = start(args=("--dev",), with_keys=False, node_ip=False)
    participant = rtc.Room()
    token = make_token("dev", "dev-room", key="devkey", secret="secret")
    await asyncio.wait_for(participant.connect(server.ws_url, token), 15)
    try:
        assert participant.connection_state == rtc.ConnectionState.CONN_CONNECTED
    finally:
        await participant.disconnect()
    assert "devkey" in server.logs() and "secret" in server.logs()
    # --dev logs at debug, but whole SDPs only at trace (a thousand lines per two joins).
    assert "a=ice-pwd" not in server.logs()


async def test_shutdown_tells_participants(start: Start) -> None:
    server = start()
    participant = await connect(server, "stayer", "shutdown")
    disconnected = EventLog(participant, "disconnected")
    try:
        server.proc.terminate()  # drains: the participant stays
        await asyncio.sleep(1.0)
        assert not disconnected.items
        assert server.proc.poll() is None
        # A load balancer stops sending new sessions here; the existing one carries on.
        async with aiohttp.ClientSession() as http, http.get(server.http_url + "/") as health:
            assert (health.status, await health.text()) == (503, "Draining")
        assert participant.connection_state == rtc.ConnectionState.CONN_CONNECTED
        server.proc.terminate()  # the second signal closes the rooms now
        reason = await disconnected.wait_for()
        assert reason == rtc.DisconnectReason.SERVER_SHUTDOWN
        assert await asyncio.to_thread(server.proc.wait, 15) == 0
    finally:
        await participant.disconnect()


async def test_asyncio_event_loop_too(start: Start) -> None:
    # uvloop is the default; the plain asyncio loop must work the same (--no-uvloop).
    server = start(args=("--no-uvloop",))
    async with joined(server, "a", "plain") as a, joined(server, "b", "plain") as b:
        received: list[rtc.DataPacket] = []
        b.on("data_received", received.append)
        await wait_until(lambda: "b" in a.remote_participants)
        await a.local_participant.publish_data(b"over asyncio")
        await wait_until(lambda: bool(received))
        assert received[0].data == b"over asyncio"
