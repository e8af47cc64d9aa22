"""``--workers N``: one machine, N worker processes as N nodes, meeting in a redis-server the
supervisor starts (nothing configured)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from livekit import api, rtc

from tests.e2e.harness import API_KEY, API_SECRET, ServerProcess, free_port
from tests.e2e.sdk import EventLog, joined, wait_until
from tests.e2e.test_media import SAMPLE_RATE, TONE_HZ, dominant_frequency, hear, publishing_tone

pytestmark = pytest.mark.sdk

ROOMS = [f"workers-{index}" for index in range(8)]


def worker_of_rooms(server: ServerProcess) -> dict[str, str]:
    """Room name -> the worker whose log says it created the room."""
    hosts = {}
    for line in server.logs().splitlines():
        if "room created" in line:
            worker = re.search(r"\bworker=(\d+)", line)
            room = re.search(r"\broom=(\S+)", line)
            if worker and room:
                hosts[room.group(1)] = worker.group(1)
    return hosts


async def test_two_workers_share_one_port_and_rooms_spread(
    start: Callable[..., ServerProcess],
) -> None:
    metrics_port = free_port()
    server = start(f"prometheus_port: {metrics_port}\n", args=("--workers", "2"))
    # Worker i serves its metrics on prometheus_port + i.
    async with aiohttp.ClientSession() as http:
        for index in range(2):
            async with http.get(f"http://127.0.0.1:{metrics_port + index}/metrics") as response:
                assert response.status == 200
                assert "livekit_room_total" in await response.text()
    async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
        for name in ROOMS:
            await lk.room.create_room(api.CreateRoomRequest(name=name))
        # Every worker answers for every room, whichever worker the request reached.
        for _ in range(4):
            listed = await lk.room.list_rooms(api.ListRoomsRequest())
            assert set(ROOMS) <= {r.name for r in listed.rooms}
    hosts = worker_of_rooms(server)
    assert set(hosts) >= set(ROOMS)
    assert {hosts[name] for name in ROOMS} == {"0", "1"}, "rooms must spread over the workers"
    # They met in a real redis-server on a private socket, the supervisor's child.
    assert "workers share redis-server on " in server.logs()
    children = _children(server.proc.pid)
    assert "redis-server" in children.values()
    assert server.stop() == 0
    assert not any(_running(pid) for pid in children), "the supervisor stopped it too"


def _children(pid: int) -> dict[int, str]:
    """A process's children: pid -> command name."""
    listed = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(child): Path(f"/proc/{child}/comm").read_text().strip() for child in listed}


def _running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


async def test_without_redis_server_one_worker_runs_with_a_warning(
    start: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """No redis-server to start and no Redis configured: one worker, and a line saying how to
    use every core."""
    server = start(args=("--workers=2",), extra_env={"PATH": str(tmp_path)})
    assert "running 1 worker instead of 2" in server.logs()
    assert "apt-get install redis-server" in server.logs()
    async with joined(server, "alone", "one-worker") as room:
        assert room.local_participant.sid.startswith("PA_")


async def test_participants_reaching_different_workers_meet(
    start: Callable[..., ServerProcess],
) -> None:
    server = start(args=("--workers", "2"))
    # Several participants: the kernel spreads their connections over both workers, so some
    # are relayed to the room's worker.
    names = [f"member-{index}" for index in range(4)]
    async with (
        joined(server, names[0], "workers-meet") as first,
        joined(server, names[1], "workers-meet") as second,
        joined(server, names[2], "workers-meet"),
        joined(server, names[3], "workers-meet") as last,
    ):
        await wait_until(lambda: set(names[1:]) <= set(first.remote_participants))
        got = EventLog(last, "data_received")
        await first.local_participant.publish_data(b"hello from one worker")
        packet = await got.wait_for(lambda p: p.data == b"hello from one worker")
        assert packet.participant.identity == names[0]
        subscribed = EventLog(second, "track_subscribed")
        async with publishing_tone(last):
            track, _, _ = await subscribed.wait_for()
            tail = (await hear(track, 1.0))[SAMPLE_RATE // 2 :]
            assert abs(dominant_frequency(tail, SAMPLE_RATE) - TONE_HZ) < 15
    assert len({line for line in server.logs().splitlines() if "registered (SERVING)" in line}) == 2


async def test_workers_drain_and_exit_on_sigterm(start: Callable[..., ServerProcess]) -> None:
    server = start(args=("--workers", "2"))
    async with joined(server, "last-one", "workers-drain") as participant:
        disconnected = EventLog(participant, "disconnected")
        server.proc.terminate()
        await asyncio.sleep(1.0)
        assert server.proc.poll() is None, "workers wait for their participants"
        assert not disconnected.items
        assert participant.connection_state == rtc.ConnectionState.CONN_CONNECTED
    assert await asyncio.to_thread(server.proc.wait, 15) == 0


async def test_workers_import_the_installed_package_not_the_working_directory(
    start: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # A user's project may have its own "server" or "sfu" package; started from there (or from
    # a checkout), workers must still run the installed server.
    for decoy in ("server", "sfu", "config"):
        (tmp_path / decoy).mkdir()
        (tmp_path / decoy / "__init__.py").write_text(f'raise ImportError("decoy {decoy}")\n')
    server = start(args=("--workers", "2"), cwd=tmp_path)
    logs = server.logs()
    assert "decoy" not in logs
    assert logs.count("registered (SERVING)") == 2
    async with joined(server, "someone", "decoys") as room:
        assert room.local_participant.sid.startswith("PA_")
