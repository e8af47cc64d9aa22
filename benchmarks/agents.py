"""Agent dispatch (issue 17): how long from a room's creation to its agent being in it, and what
an idle worker connection costs the server.

1. One real livekit-agents worker (tests/agents/echo_agent.py, ``.venv-agents``, production
   mode, two processes kept warm as a deployment would) serves automatic dispatch; rooms are
   created one after another through ``CreateRoom`` and each is polled (``ListParticipants``,
   every 20 ms) until its agent is in; then the room is deleted. Reports p50/p99.
2. ``--idle-workers`` minimal workers speak the protocol as livekit-agents does when it has no
   job (register, then ``update_worker`` every 2.5 s, WebSocket pings): the server's CPU over a
   minute against a minute without them gives the cost per idle worker.

    unshare -n sh tests/netns.sh .venv/bin/python -m benchmarks.agents --rooms 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from livekit import api
from livekit.protocol import agent

from loadtest import procstat
from tests.e2e.harness import API_KEY, API_SECRET, ServerProcess, start_server
from tests.e2e.sdk import wait_until
from tests.e2e.test_agents import AGENTS_PYTHON, ECHO_AGENT

#: livekit-agents' status interval.
STATUS_INTERVAL_S = 2.5


async def _agent_joined(lkapi: api.LiveKitAPI, room: str, deadline_s: float = 30.0) -> bool:
    until = time.monotonic() + deadline_s
    while time.monotonic() < until:
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        if any(p.kind == api.ParticipantInfo.Kind.AGENT for p in listed.participants):
            return True
        await asyncio.sleep(0.02)
    return False


async def dispatch_latency(server: ServerProcess, rooms: int, log_dir: Path) -> list[float]:
    env = dict(
        os.environ,
        LIVEKIT_URL=server.ws_url,
        LIVEKIT_API_KEY=API_KEY,
        LIVEKIT_API_SECRET=API_SECRET,
        ECHO_AGENT_IDLE_PROCESSES="2",
        ECHO_AGENT_LOAD="0.0",
    )
    with (log_dir / "worker.log").open("wb") as out:
        worker = await asyncio.create_subprocess_exec(
            str(AGENTS_PYTHON), str(ECHO_AGENT), env=env, stdout=out, stderr=out
        )
    latencies: list[float] = []
    try:
        await wait_until(lambda: "agent worker AW_" in server.logs(), 60)
        await asyncio.sleep(5)  # the warm processes start
        async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lkapi:
            for index in range(rooms):
                name = f"bench-{index}"
                started = time.monotonic()
                await lkapi.room.create_room(api.CreateRoomRequest(name=name))
                if await _agent_joined(lkapi, name):
                    latencies.append((time.monotonic() - started) * 1000)
                await lkapi.room.delete_room(api.DeleteRoomRequest(room=name))
                await asyncio.sleep(STATUS_INTERVAL_S + 0.5)  # the worker is AVAILABLE again
    finally:
        worker.terminate()
        await worker.wait()
    return latencies


async def _idle_worker(url: str, token: str, stop: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{url}/agent", headers=headers, heartbeat=30) as ws,
    ):
        register = agent.RegisterWorkerRequest(type=agent.JobType.JT_ROOM)
        await ws.send_bytes(agent.WorkerMessage(register=register).SerializeToString())
        await ws.receive()
        while not stop.is_set():
            status = agent.UpdateWorkerStatus(status=agent.WorkerStatus.WS_AVAILABLE, load=0.1)
            await ws.send_bytes(agent.WorkerMessage(update_worker=status).SerializeToString())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATUS_INTERVAL_S)


async def idle_cost(server: ServerProcess, workers: int, seconds: float) -> tuple[float, float]:
    """(server CPU seconds over ``seconds`` without workers, with ``workers`` idle ones)."""
    token = api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(agent=True))
    jwt = token.to_jwt()
    before = procstat.cpu_seconds(server.proc.pid)
    await asyncio.sleep(seconds)
    baseline = procstat.cpu_seconds(server.proc.pid) - before
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_idle_worker(server.ws_url, jwt, stop)) for _ in range(workers)]
    await asyncio.sleep(5)  # all registered
    before = procstat.cpu_seconds(server.proc.pid)
    await asyncio.sleep(seconds)
    loaded = procstat.cpu_seconds(server.proc.pid) - before
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return baseline, loaded


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--idle-workers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="agents-bench-"))
    server = start_server(log_dir)
    try:
        latencies = await dispatch_latency(server, args.rooms, log_dir)
        baseline, loaded = await idle_cost(server, args.idle_workers, args.seconds)
    finally:
        server.stop()
    print(f"rooms: {args.rooms}, agent in the room: {len(latencies)}")
    if latencies:
        print(
            f"room created -> agent in it: p50 {statistics.median(latencies):.0f} ms, "
            f"p99 {_percentile(latencies, 0.99):.0f} ms, max {max(latencies):.0f} ms"
        )
    extra = max(0.0, loaded - baseline)
    per_worker_us = extra / args.idle_workers / args.seconds * 1e6
    print(
        f"{args.idle_workers} idle workers over {args.seconds:.0f} s: server CPU {loaded:.3f} s "
        f"against {baseline:.3f} s without; {per_worker_us:.1f} us of CPU per worker per second"
    )


if __name__ == "__main__":
    asyncio.run(main())
