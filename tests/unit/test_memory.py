"""Memory upkeep (server/memory.py): glibc's malloc_trim found and called periodically, the
cyclic collector run periodically over what the startup objects, frozen, leave."""

from __future__ import annotations

import asyncio
import gc
import time

from server.memory import GarbageCollector, MemoryTrimmer, find_malloc_trim, freeze_startup_objects


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


async def test_collects_every_interval_until_stopped() -> None:
    calls: list[float] = []

    def collect() -> int:
        calls.append(time.perf_counter())
        return 0

    collector = GarbageCollector(collect, interval=0.01)
    collector.start()
    await asyncio.sleep(0.1)
    await collector.stop()
    count = len(calls)
    assert count >= 3
    await asyncio.sleep(0.05)
    assert len(calls) == count, "stopped"


async def test_a_slow_collection_waits_longer_for_the_next() -> None:
    calls: list[float] = []

    def collect() -> int:
        calls.append(time.perf_counter())
        time.sleep(0.01)  # 0.01 s at a share of 0.1: 0.1 s until the next
        return 0

    collector = GarbageCollector(collect, interval=0.001, share=0.1)
    collector.start()
    await asyncio.sleep(0.25)
    await collector.stop()
    assert 2 <= len(calls) <= 3
    assert calls[1] - calls[0] >= 0.1


def test_startup_objects_are_frozen_out_of_the_collector() -> None:
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
