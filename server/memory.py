"""Give freed heap memory back to the system now and then (glibc ``malloc_trim``).

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
import logging
import sys
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: How often memory is trimmed: rare enough to cost nothing, often enough to follow churn.
TRIM_INTERVAL_S = 60.0


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


class MemoryTrimmer:
    """Calls ``trim`` every ``interval`` seconds while started.

    :param trim: ``malloc_trim`` (tests pass their own); None: nothing to do.
    """

    def __init__(
        self, trim: Callable[[int], int] | None, interval: float = TRIM_INTERVAL_S
    ) -> None:
        self._trim = trim
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._trim is None:
            logger.debug("memory: no malloc_trim in this C library")
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="malloc-trim")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        assert self._trim is not None
        while True:
            await asyncio.sleep(self._interval)
            self._trim(0)
