"""Churn soak (issue 14): real SDK participants join, publish a tone, and leave, over and over,
beside a room whose listener must keep hearing; the server's RSS, asyncio tasks and open file
descriptors are sampled every minute.

Pass: after the warm-up, RSS grows under 5 % and tasks and descriptors do not grow. Run it in
the test namespace (the SDK needs a non-loopback adapter):

    unshare -n sh tests/netns.sh .venv/bin/python -m benchmarks.soak --minutes 60
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import aiohttp
from livekit import rtc
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import probe
from tests.e2e.harness import ServerProcess, free_port, start_server
from tests.e2e.sdk import connect
from tests.e2e.test_media import publishing_tone
from tests.reliability.conftest import media_keeps_flowing

RSS_GROWTH_LIMIT = 0.05
#: Seconds the churn pauses before each sample, so every sample sees the same idle room.
SETTLE_S = 5.0
#: (minute, joins so far, RSS KB, asyncio tasks, open descriptors)
Sample = tuple[float, int, int, int, int]


async def _tasks(server: ServerProcess) -> int:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "livekit_asyncio_tasks":
                return int(sample.value)
    return -1


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _cycle(server: ServerProcess, index: int, seconds: float) -> None:
    participant: rtc.Room = await connect(server, f"churn-{index}", "soak")
    try:
        async with publishing_tone(participant):
            await asyncio.sleep(seconds)
    finally:
        await participant.disconnect()


async def _churn(server: ServerProcess, until: float, at_once: int, first: int) -> int:
    """Batches of ``at_once`` participants until ``until``; returns the next index."""
    index = first
    while time.monotonic() < until:
        await asyncio.gather(*(_cycle(server, i, 1.0) for i in range(index, index + at_once)))
        index += at_once
    return index


async def _sample(server: ServerProcess, started: float, joins: int) -> Sample:
    """Once the churn has paused and what it left has had time to go (quiescent figures)."""
    await asyncio.sleep(SETTLE_S)
    pid = server.proc.pid
    minute = (time.monotonic() - started) / 60
    sample = (minute, joins, probe.resident_kb(pid), await _tasks(server), _descriptors(pid))
    print(f"| {minute:.0f} | {joins} | {sample[2] / 1024:.1f} MB | {sample[3]} | {sample[4]} |")
    return sample


async def soak(args: argparse.Namespace) -> list[Sample]:
    metrics_port = free_port()
    server = start_server(
        Path(tempfile.mkdtemp(prefix="lkpy-soak-")), f"prometheus_port: {metrics_port}\n"
    )
    server.metrics_port = metrics_port
    samples: list[Sample] = []
    joins = 0
    started = time.monotonic()
    stop = started + args.minutes * 60
    try:
        async with media_keeps_flowing(server, "soak") as victim:
            samples.append(await _sample(server, started, joins))
            while time.monotonic() < stop:
                until = min(stop, time.monotonic() + args.sample_s - SETTLE_S)
                joins = await _churn(server, until, args.at_once, joins)
                samples.append(await _sample(server, started, joins))
            victim.assert_unharmed(started)
    finally:
        server.stop()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--warm-up-minutes", type=float, default=10.0)
    parser.add_argument("--sample-s", type=float, default=60.0)
    parser.add_argument("--at-once", type=int, default=4, help="participants per churn batch")
    args = parser.parse_args()
    print("| minute | joins so far | server RSS | asyncio tasks | open fds |")
    print("|---|---|---|---|---|")
    samples = asyncio.run(soak(args))
    warm = [s for s in samples if s[0] >= args.warm_up_minutes] or samples
    first, last = warm[0], warm[-1]
    growth = (last[2] - first[2]) / first[2]
    joins = last[1] - first[1]
    print(f"\nafter warm-up ({first[0]:.0f} -> {last[0]:.0f} min, {joins} joins):")
    print(
        f"RSS {first[2] / 1024:.1f} -> {last[2] / 1024:.1f} MB ({100 * growth:+.1f} %), "
        f"{(last[2] - first[2]) / max(joins, 1) * 100 / 1024:.2f} MB per 100 joins"
    )
    print(
        f"tasks {first[3]} -> {last[3]}, descriptors {first[4]} -> {last[4]} "
        f"(max {max(s[3] for s in warm)} / {max(s[4] for s in warm)})"
    )
    verdict = growth < RSS_GROWTH_LIMIT and last[3] <= first[3] + 2 and last[4] <= first[4] + 2
    print(f"pass (RSS growth < 5 %, no task or descriptor growth): {verdict}")


if __name__ == "__main__":
    main()
