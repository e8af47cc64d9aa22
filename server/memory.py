"""Give freed heap memory back to the system now and then (glibc ``malloc_trim``), and free
departed participants' reference cycles soon after they leave (a full collection every few
seconds, cheap once the startup objects are frozen out of the collector).

A server whose participants come and go frees a lot of small C allocations (OpenSSL and libsrtp
state per DTLS session, aiohttp buffers); glibc keeps the freed pages of its main heap mapped,
so RSS climbs in steps as the heap fragments even when nothing leaks (the hour-long churn soak,
``benchmarks/RESULTS.md``). ``malloc_trim(0)`` hands back the unused pages, the middle of the
heap included (glibc 2.8 and later), in a few milliseconds. Elsewhere than glibc there is no
such call and nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import sys
import time
from collections.abc import Callable, Coroutine

logger = logging.getLogger(__name__)

#: How often memory is trimmed: rare enough to cost nothing, often enough to follow churn.
TRIM_INTERVAL_S = 60.0
#: How often departed participants' garbage is collected (a full cyclic collection) ...
COLLECT_INTERVAL_S = 5.0
#: ... or less often, so that collections take at most this share of the time.
COLLECT_SHARE = 0.01


def find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def freeze_startup_objects() -> None:
    """Leave the objects alive once the server is built (modules, classes, functions: about
    80,000) out of the cyclic collector for good (``gc.freeze``), so that a full collection
    (:class:`GarbageCollector`) visits only the objects created since: a few milliseconds."""
    gc.collect()
    gc.freeze()
    logger.debug("memory: %d objects frozen out of the cyclic collector", gc.get_freeze_count())


def write_allocator_stats() -> None:
    """pymalloc's arenas and pools (``sys._debugmallocstats``) and, under glibc, each malloc
    arena's size and use (``malloc_stats``), written to the process's stderr (for SIGUSR2)."""
    sys._debugmallocstats()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        stats = ctypes.CDLL(name).malloc_stats
    except (OSError, AttributeError):
        return
    stats.argtypes = []
    stats.restype = None
    sys.stderr.flush()
    stats()


class Periodic:
    """One background task of this module's, started and stopped with the rooms."""

    _task: asyncio.Task[None] | None = None

    def _start(self, work: Coroutine[None, None, None], name: str) -> None:
        self._task = asyncio.get_running_loop().create_task(work, name=name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class GarbageCollector(Periodic):
    """A full cyclic collection every ``interval`` seconds while started, or less often when
    one takes more than ``share`` of that.

    A participant's objects form reference cycles (its peer connection, data channels, tracks,
    WebSocket handler) and outlive the young collections, so only a full collection frees
    them, with the OpenSSL and libsrtp state they hold. CPython runs one only every ten
    middle collections, and only once the objects promoted since the last exceed a quarter of
    those it kept then: in the churn soak, up to a minute's departed participants (17,000
    objects) waited as garbage, the heaps' use rose and fell by 15 MB, and each new height
    left RSS higher for good (the staircase, ``benchmarks/RESULTS.md``).

    :param collect: ``gc.collect`` (tests pass their own).
    """

    def __init__(
        self,
        collect: Callable[[], int] = gc.collect,
        interval: float = COLLECT_INTERVAL_S,
        share: float = COLLECT_SHARE,
    ) -> None:
        self._collect = collect
        self._interval = interval
        self._share = share

    def start(self) -> None:
        self._start(self._run(), "gc-collect")

    async def _run(self) -> None:
        wait = self._interval
        while True:
            await asyncio.sleep(wait)
            began = time.perf_counter()
            self._collect()
            wait = max(self._interval, (time.perf_counter() - began) / self._share)


class MemoryTrimmer(Periodic):
    """Calls ``trim`` every ``interval`` seconds while started.

    :param trim: ``malloc_trim`` (tests pass their own); None: nothing to do.
    """

    def __init__(
        self, trim: Callable[[int], int] | None, interval: float = TRIM_INTERVAL_S
    ) -> None:
        self._trim = trim
        self._interval = interval

    def start(self) -> None:
        if self._trim is None:
            logger.debug("memory: no malloc_trim in this C library")
            return
        self._start(self._run(), "malloc-trim")

    async def _run(self) -> None:
        assert self._trim is not None
        while True:
            await asyncio.sleep(self._interval)
            self._trim(0)
