"""Idle cost: server CPU and memory with N connected SDK participants that send nothing.

Starts the real server, connects N official-SDK participants to one room, then samples the
server process's CPU time (/proc/<pid>/stat) and resident memory over a quiet window.
Needs a non-loopback adapter for libwebrtc: run it inside the test namespace, e.g.

    unshare -n sh tests/netns.sh .venv/bin/python -m benchmarks.idle --participants 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from livekit import rtc

from tests.e2e.harness import make_token, start_server

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(participants: int, window: float) -> None:
    server = start_server(Path(tempfile.mkdtemp()))
    pid = server.proc.pid
    rooms: list[rtc.Room] = []
    try:
        base_memory = resident_mb(pid)
        for index in range(participants):
            room = rtc.Room()
            await room.connect(server.ws_url, make_token(f"idle{index}", "idle"))
            rooms.append(room)
        await asyncio.sleep(3)  # let joins settle
        memory = resident_mb(pid)
        before = cpu_seconds(pid)
        await asyncio.sleep(window)
        used = cpu_seconds(pid) - before
        print(f"participants            {participants}")
        print(f"server CPU              {100 * used / window:.2f} % of one core")
        print(f"CPU per participant     {1e3 * used / window / participants:.3f} ms/s")
        print(f"memory (RSS)            {memory:.1f} MB, {base_memory:.1f} MB before joins")
        print(f"memory per participant  {(memory - base_memory) / participants * 1024:.0f} KB")
    finally:
        for room in rooms:
            await room.disconnect()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--participants", type=int, default=50)
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    asyncio.run(measure(args.participants, args.window))


if __name__ == "__main__":
    main()
