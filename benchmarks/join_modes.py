"""Join latency by signalling path (issue 15): real Python SDK participants join one room in a
storm, through ``/rtc/v1`` (one peer connection, the SDK's default) and through ``/rtc`` (two
peer connections), against a fresh server each time (one worker, pinned to core 0; the SDK on
core 1). A publisher's tone is in the room, so every joiner also subscribes.

Reports, per path: ``Room.connect`` latency p50/p99 (the SDK returns once its primary peer
connection is up), time to the first subscribed track p50/p99, failures, and the server's CPU
per join. Run it in the test namespace:

    unshare -n sh tests/netns.sh .venv/bin/python -m benchmarks.join_modes --participants 40
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from livekit import rtc

from benchmarks import probe
from loadtest import procstat
from tests.e2e.harness import ServerProcess, make_token, start_server
from tests.e2e.sdk import connect
from tests.e2e.test_media import publishing_tone

JOIN_TIMEOUT_S = 30.0


@dataclass
class Storm:
    mode: str
    connect_ms: list[float] = field(default_factory=list)
    first_track_ms: list[float] = field(default_factory=list)
    failures: int = 0
    server_cpu_s: float = 0.0
    seconds: float = 0.0


async def _join(server: ServerProcess, identity: str, single: bool, storm: Storm) -> rtc.Room:
    room = rtc.Room()
    subscribed = asyncio.Event()
    room.on("track_subscribed", lambda *_: subscribed.set())
    options = rtc.RoomOptions(single_peer_connection=single)
    started = time.monotonic()
    try:
        await asyncio.wait_for(
            room.connect(server.ws_url, make_token(identity, "storm"), options), JOIN_TIMEOUT_S
        )
        storm.connect_ms.append((time.monotonic() - started) * 1000)
        await asyncio.wait_for(subscribed.wait(), JOIN_TIMEOUT_S)
        storm.first_track_ms.append((time.monotonic() - started) * 1000)
    except (TimeoutError, rtc.ConnectError):
        storm.failures += 1
    return room


async def storm(args: argparse.Namespace, single: bool) -> Storm:
    result = Storm("/rtc/v1 (one PC)" if single else "/rtc (two PCs)")
    server = start_server(Path(tempfile.mkdtemp(prefix="lkpy-join-modes-")))
    pid = server.proc.pid
    probe.pin(pid, probe.SERVER_CORE)
    rooms: list[rtc.Room] = []
    try:
        publisher = await connect(server, "publisher", "storm")
        rooms.append(publisher)
        async with publishing_tone(publisher):
            await asyncio.sleep(1.0)
            cpu_before, started = procstat.cpu_seconds(pid), time.monotonic()
            joins = []
            for index in range(args.participants):
                joins.append(asyncio.ensure_future(_join(server, f"j{index}", single, result)))
                await asyncio.sleep(1 / args.num_per_second)
            rooms += await asyncio.gather(*joins)
            result.server_cpu_s = procstat.cpu_seconds(pid) - cpu_before
            result.seconds = time.monotonic() - started
    finally:
        await asyncio.gather(*(room.disconnect() for room in rooms), return_exceptions=True)
        server.stop()
    return result


def _p(values: list[float], quantile: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]:.0f}"


def report(results: list[Storm], participants: int) -> None:
    print(
        "| path | joined | failed | connect p50 / p99 | first track p50 / p99 "
        "| server CPU per join |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        joined = len(r.connect_ms)
        per_join = r.server_cpu_s * 1000 / max(joined, 1)
        print(
            f"| {r.mode} | {joined}/{participants} | {r.failures} | "
            f"{_p(r.connect_ms, 0.5)} / {_p(r.connect_ms, 0.99)} ms | "
            f"{_p(r.first_track_ms, 0.5)} / {_p(r.first_track_ms, 0.99)} ms | "
            f"{per_join:.1f} ms ({r.server_cpu_s:.2f} s over {r.seconds:.1f} s) |"
        )
    if len(results) == 2 and results[0].connect_ms and results[1].connect_ms:
        ratio = statistics.median(results[0].connect_ms) / statistics.median(results[1].connect_ms)
        print(f"\nconnect p50 ratio /rtc/v1 : /rtc = {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--participants", type=int, default=40)
    parser.add_argument("--num-per-second", type=float, default=10.0)
    args = parser.parse_args()
    os.sched_setaffinity(0, {probe.LOADER_CORE})
    print(f"load average before: {probe.load_average()}")
    results = [asyncio.run(storm(args, single)) for single in (True, False)]
    report(results, args.participants)
    print(f"load average after: {probe.load_average()}")


if __name__ == "__main__":
    main()
