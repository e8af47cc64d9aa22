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
import re
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import aiohttp
from livekit import rtc
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import probe, smaps
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


async def _churn_here(server: ServerProcess, seconds: float, at_once: int, first: int) -> int:
    """Batches of ``at_once`` participants for ``seconds``; returns the next index."""
    index = first
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        await asyncio.gather(*(_cycle(server, i, 1.0) for i in range(index, index + at_once)))
        index += at_once
    return index


async def _churn(server: ServerProcess, seconds: float, at_once: int, first: int) -> int:
    """The churn of one sample period, in a child process of its own.

    The Python SDK leaks in its own process over thousands of connections (an FFI handle
    assertion and 23.8 GB resident after about 40 minutes), which ended the first soak runs.
    A fresh process per period keeps the client's leak from being mistaken for the server's,
    and the victim listener, which stays in this process, still sees one connection only.
    """
    command = [sys.executable, "-m", "benchmarks.soak", "--churn-port", str(server.port)]
    command += ["--churn-seconds", f"{seconds:.1f}", "--at-once", str(at_once)]
    command += ["--churn-first", str(first)]
    child = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    out, _ = await child.communicate()
    if child.returncode != 0:
        # The SDK aborts now and then under churn ("Attempted to drop unknown FFI handle",
        # then SIGABRT): the client's crash, not the server's. The period's joins are not
        # known, so none are counted; the server's figures and the listener go on.
        CRASHED_CHILDREN.append(child.returncode or 0)
        print(f"churn child exited {child.returncode}; its joins are not counted", flush=True)
        return first
    return int(out.decode().split()[-1])


#: Exit statuses of churn children that crashed (the SDK's own aborts).
CRASHED_CHILDREN: list[int] = []


#: The last line of glibc's ``malloc_stats`` before its totals.
_STATS_END = "Total (incl. mmap):"


def allocator_stats(log: str) -> str:
    """The last allocator statistics the server wrote (SIGUSR2, ``server/memory.py``):
    pymalloc's arenas and the bytes in its blocks, glibc's arena count and its totals."""
    totals = r"Total \(incl\. mmap\):\nsystem bytes\s+=\s+(\d+)\nin use bytes\s+=\s+(\d+)"
    parts: list[str] = []
    last = log.rfind(_STATS_END)
    if last >= 0:
        first = log.rfind("Arena 0:", 0, last)
        parts.append(f"glibc arenas {log.count(chr(10) + 'Arena ', first - 1, last)}")
        found = re.search(totals, log[last:])
        if found:
            system, used = (int(value) / 2**20 for value in found.groups())
            parts.append(f"glibc system {system:.1f} MB, in use {used:.1f} MB")
    arenas = re.findall(r"# arenas allocated current\s+=\s+([\d,]+)", log)
    used_blocks = re.findall(r"# bytes in allocated blocks\s+=\s+([\d,]+)", log)
    if arenas and used_blocks:
        used = int(used_blocks[-1].replace(",", "")) / 2**20
        parts.append(f"pymalloc arenas {arenas[-1]}, in blocks {used:.1f} MB")
    return "; ".join(parts)


class SmapsWatch:
    """Per sample: resident memory by kind of mapping, the threads, the allocators' own
    figures, and which mappings changed since the previous sample (``--smaps``)."""

    def __init__(self, server: ServerProcess) -> None:
        self._server = server
        self._previous: list[smaps.Mapping] | None = None
        self._stats_seen = 0

    def read(self) -> None:
        """Before the server's SIGUSR2 handler runs (it allocates)."""
        pid = self._server.proc.pid
        mappings = smaps.read(pid)
        threads = len(os.listdir(f"/proc/{pid}/task"))
        print(f"  smaps: {smaps.summary(mappings)}; {threads} threads")
        if self._previous is not None:
            for line in smaps.changes(self._previous, mappings):
                print(line)
        self._previous = mappings

    async def allocators(self) -> None:
        """Once the server has written its statistics (up to 10 s after the signal)."""
        for _ in range(100):
            log = self._server.logs()
            if log.count(_STATS_END) > self._stats_seen:
                break
            await asyncio.sleep(0.1)
        self._stats_seen = log.count(_STATS_END)
        print(f"  allocators: {allocator_stats(log)}")


async def _sample(
    server: ServerProcess, started: float, joins: int, watch: SmapsWatch | None
) -> Sample:
    """Once the churn has paused and what it left has had time to go (quiescent figures)."""
    await asyncio.sleep(SETTLE_S)
    pid = server.proc.pid
    rss = probe.resident_kb(pid)
    if watch is not None:
        watch.read()
    server.proc.send_signal(signal.SIGUSR2)  # object counts (and a snapshot when tracing)
    minute = (time.monotonic() - started) / 60
    sample = (minute, joins, rss, await _tasks(server), _descriptors(pid))
    print(f"| {minute:.0f} | {joins} | {sample[2] / 1024:.1f} MB | {sample[3]} | {sample[4]} |")
    if watch is not None:
        await watch.allocators()
    return sample


async def soak(args: argparse.Namespace) -> list[Sample]:
    metrics_port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="lkpy-soak-"))
    env = {"PYTHONTRACEMALLOC": "1", "TMPDIR": str(directory)} if args.trace_memory else {}
    env.update(item.split("=", 1) for item in args.server_env)
    server = start_server(directory, f"prometheus_port: {metrics_port}\n", extra_env=env)
    server.metrics_port = metrics_port
    print(f"server pid {server.proc.pid}, log {server.log_path}, extra environment {env}")
    watch = SmapsWatch(server) if args.smaps else None
    samples: list[Sample] = []
    joins = 0
    started = time.monotonic()
    stop = started + args.minutes * 60
    try:
        async with media_keeps_flowing(server, "soak") as victim:
            samples.append(await _sample(server, started, joins, watch))
            while time.monotonic() < stop:
                seconds = min(stop - time.monotonic(), args.sample_s - SETTLE_S)
                joins = await _churn(server, seconds, args.at_once, joins)
                samples.append(await _sample(server, started, joins, watch))
            victim.assert_unharmed(started)
    finally:
        server.stop()
    if args.trace_memory:
        _report_growth(directory, args.warm_up_minutes / max(args.minutes, 1e-9))
    return samples


def _report_growth(directory: Path, warm_fraction: float) -> None:
    """The source lines whose live allocations grew most from the first snapshot after the
    warm-up to the last (tracemalloc, one frame per allocation)."""
    snapshots = sorted(directory.glob("livekit-py-server-*"), key=lambda p: p.stat().st_mtime)
    if len(snapshots) < 2:
        return
    first = snapshots[min(len(snapshots) - 2, int(warm_fraction * len(snapshots)))]
    before = tracemalloc.Snapshot.load(str(first))
    after = tracemalloc.Snapshot.load(str(snapshots[-1]))
    print(f"\nlargest growth, {first.name} -> {snapshots[-1].name}:")
    for stat in after.compare_to(before, "lineno")[:15]:
        print(f"  {stat}")


def _churn_child(args: argparse.Namespace) -> None:
    """One period's churn against the soak's server; prints the next participant index."""
    server = ServerProcess(proc=None, port=args.churn_port, log_path=Path(os.devnull))  # type: ignore[arg-type]
    print(asyncio.run(_churn_here(server, args.churn_seconds, args.at_once, args.churn_first)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--warm-up-minutes", type=float, default=10.0)
    parser.add_argument("--sample-s", type=float, default=60.0)
    parser.add_argument("--at-once", type=int, default=4, help="participants per churn batch")
    parser.add_argument(
        "--trace-memory",
        action="store_true",
        help="run the server under tracemalloc and print where its memory grew",
    )
    parser.add_argument(
        "--smaps",
        action="store_true",
        help="per sample, the server's resident memory by mapping and what changed, its "
        "threads and its allocators' statistics",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set in the server's environment (MALLOC_ARENA_MAX=2, PYTHONMALLOC=malloc ...)",
    )
    parser.add_argument("--churn-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--churn-seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--churn-first", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.churn_port is not None:
        _churn_child(args)
        return
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
    if CRASHED_CHILDREN:
        print(f"churn children that crashed (the SDK's aborts): {len(CRASHED_CHILDREN)}")
    verdict = growth < RSS_GROWTH_LIMIT and last[3] <= first[3] + 2 and last[4] <= first[4] + 2
    print(f"pass (RSS growth < 5 %, no task or descriptor growth): {verdict}")


if __name__ == "__main__":
    main()
