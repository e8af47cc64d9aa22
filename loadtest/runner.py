"""A process's share of the participants: the join ramp, housekeeping, the measurement
window, and leaving. The window opens once every participant has joined (or failed) and lasts
``--duration``; a :class:`Control` decides when, in this process or, with ``--workers``, in
the parent (``control.py``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
import urllib.parse
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp

from loadtest import media
from loadtest.pacer import Pacer, run_pacer
from loadtest.params import Params, TesterSpec
from loadtest.report import Progress
from loadtest.stats import TesterResult, WindowCounts
from loadtest.tester import JoinError, MediaBank, ProcessContext, Tester

logger = logging.getLogger(__name__)

REPORT_INTERVAL_S = 0.5
_T = TypeVar("_T")


class Control(Protocol):
    """Where a process reports progress and learns when the window opens and closes."""

    def report(self, progress: Progress) -> None: ...

    async def wait_window(self) -> None: ...

    async def wait_stop(self) -> None: ...


@dataclass(frozen=True)
class WorkerPlan:
    params: Params
    specs: tuple[TesterSpec, ...]
    start_wall: float
    """Wall-clock time participant 0 joins; participant i joins i / num_per_second later."""


@dataclass
class ProcessOutcome:
    testers: list[TesterResult]
    window: WindowCounts


def run_loop(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run on uvloop when installed (it receives UDP faster), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def prepare_media(params: Params) -> MediaBank:
    """The clips this run needs, encoded now unless cached."""
    audio = media.audio_clip(params.cache_dir) if params.audio_publishers else None
    video = {}
    if params.video_publishers:
        for rid, width, height, bitrate in params.layers:
            video[rid] = media.video_clip(width, height, bitrate, params.cache_dir)
    return MediaBank(audio=audio, video=video)


def local_address(url: str) -> str:
    """The local address that routes to the server's host (our host candidate)."""
    host = urllib.parse.urlsplit(url).hostname or "127.0.0.1"
    address = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((str(address), 9))
        return str(probe.getsockname()[0])


def raise_file_limit() -> None:
    """Each participant holds a TCP and one or two UDP sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class ProcessRun:
    """Run ``plan``'s participants in this process's event loop."""

    def __init__(self, plan: WorkerPlan, control: Control) -> None:
        self.plan = plan
        self.control = control
        self.testers: list[Tester] = []
        self._joins: list[asyncio.Task[None]] = []

    async def run(self) -> ProcessOutcome:
        params = self.plan.params
        raise_file_limit()
        bank = prepare_media(params)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            ctx = ProcessContext(
                params, session, Pacer(), bank, "0.0.0.0", local_address(params.url)
            )
            self.testers = [Tester(spec, ctx) for spec in self.plan.specs]
            loop = asyncio.get_running_loop()
            background = [
                loop.create_task(run_pacer(ctx.pacer), name="pacer"),
                loop.create_task(self._housekeeping(), name="housekeeping"),
                loop.create_task(self._ramp(), name="ramp"),
            ]
            try:
                window = await self._measure()
            finally:
                for task in background + self._joins:
                    task.cancel()
                await asyncio.gather(*background, *self._joins, return_exceptions=True)
                await asyncio.gather(*(t.leave() for t in self.testers), return_exceptions=True)
        return ProcessOutcome([tester.collect() for tester in self.testers], window)

    async def _measure(self) -> WindowCounts:
        await self.control.wait_window()
        start, start_time, start_cpu = self.progress(), time.monotonic(), time.process_time()
        await self.control.wait_stop()
        end = self.progress()
        return WindowCounts(
            seconds=time.monotonic() - start_time,
            packets_in=end.packets_in - start.packets_in,
            octets_in=end.octets_in - start.octets_in,
            expected_in=end.expected_in - start.expected_in,
            audio_packets_in=end.audio_packets_in - start.audio_packets_in,
            audio_tracks=end.audio_streams,
            packets_out=end.packets_out - start.packets_out,
            octets_out=end.octets_out - start.octets_out,
            cpu_seconds=time.process_time() - start_cpu,
        )

    async def _ramp(self) -> None:
        rate = self.plan.params.num_per_second
        loop = asyncio.get_running_loop()
        for tester in self.testers:
            due = self.plan.start_wall + tester.spec.index / rate
            await asyncio.sleep(max(0.0, due - time.time()))
            self._joins.append(loop.create_task(self._join(tester), name="join"))

    async def _join(self, tester: Tester) -> None:
        try:
            await tester.run_join()
        except JoinError as exc:
            tester.result.error = tester.result.error or str(exc)
        except (OSError, ValueError) as exc:
            tester.result.error = tester.result.error or f"{type(exc).__name__}: {exc}"
        finally:
            tester.settled = True

    async def _housekeeping(self) -> None:
        """Progress twice a second; pings, consent checks and RTCP reports once a second."""
        tick = 0
        params = self.plan.params
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            tick += 1
            if tick % 2 == 0:
                now, wall = time.monotonic(), time.time()
                for tester in self.testers:
                    for peer in tester.peers():
                        peer.tick(now, wall)
                    await tester.ping(now)
                    if params.sink and tester.subscriber is not None:
                        tester.subscriber.sink_when_flowing(params.media_tracks_per_subscriber)
            self.control.report(self.progress())

    def progress(self) -> Progress:
        progress = Progress(total=len(self.testers))
        for tester in self.testers:
            progress.joined += tester.result.joined
            progress.failed += bool(tester.result.error)
            progress.settled += tester.settled
            if tester.subscriber is not None:
                packets, octets, expected, audio, streams = tester.subscriber.received()
                progress.packets_in += packets
                progress.octets_in += octets
                progress.expected_in += expected
                progress.audio_packets_in += audio
                progress.audio_streams += streams
            if tester.publisher is not None:
                progress.packets_out += tester.publisher.packets_out
                progress.octets_out += tester.publisher.octets_out
        return progress
