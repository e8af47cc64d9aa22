"""The memory trimmer (server/memory.py): glibc's malloc_trim found and called periodically."""

from __future__ import annotations

import asyncio

from server.memory import MemoryTrimmer, find_malloc_trim


def test_glibc_malloc_trim_is_found_and_callable() -> None:
    trim = find_malloc_trim()
    assert trim is not None, "Debian's glibc has malloc_trim"
    assert trim(0) in (0, 1)


async def test_trims_every_interval_until_stopped() -> None:
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    trimmer = MemoryTrimmer(trim, interval=0.01)
    trimmer.start()
    await asyncio.sleep(0.1)
    await trimmer.stop()
    count = len(calls)
    assert count >= 3 and set(calls) == {0}
    await asyncio.sleep(0.05)
    assert len(calls) == count, "stopped"


async def test_without_malloc_trim_nothing_runs() -> None:
    trimmer = MemoryTrimmer(None, interval=0.01)
    trimmer.start()
    await trimmer.stop()
