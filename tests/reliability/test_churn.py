"""Join, publish and leave, over and over, beside a room that must not notice; afterwards the
node holds what it held before (participants and asyncio tasks). The hour-long version with
memory samples is ``benchmarks/soak.py``."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from livekit import rtc
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import ServerProcess
from tests.e2e.sdk import connect
from tests.e2e.test_media import publishing_tone
from tests.reliability.conftest import media_keeps_flowing

CYCLES = 12
AT_ONCE = 3


async def _gauges(server: ServerProcess) -> dict[str, float]:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        text = await response.text()
    wanted = {"livekit_participant_total", "livekit_asyncio_tasks"}
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in wanted
    }


async def _cycle(server: ServerProcess, room: str, index: int) -> None:
    participant: rtc.Room = await connect(server, f"churn-{index}", room)
    try:
        async with publishing_tone(participant):
            await asyncio.sleep(0.5)
    finally:
        await participant.disconnect()


async def test_churn_leaves_nothing_behind(server: ServerProcess) -> None:
    room = "churn"
    async with media_keeps_flowing(server, room) as victim:
        since = time.monotonic()
        before = await _gauges(server)
        assert before["livekit_participant_total"] == 2
        for first in range(0, CYCLES, AT_ONCE):
            await asyncio.gather(*(_cycle(server, room, i) for i in range(first, first + AT_ONCE)))
        deadline = time.monotonic() + 20
        after = await _gauges(server)
        while after["livekit_participant_total"] != 2 or (
            after["livekit_asyncio_tasks"] > before["livekit_asyncio_tasks"] + 2
        ):
            assert time.monotonic() < deadline, (before, after)
            await asyncio.sleep(0.5)
            after = await _gauges(server)
        victim.assert_unharmed(since)
