"""The reliability tier: abuse from one client must not hurt anyone else.

Every test runs beside a real SDK publisher and listener in the attacked room
(:func:`media_keeps_flowing`), and the server's log must hold no traceback.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from livekit import rtc

from tests.e2e.conftest import assert_clean_exit, start  # noqa: F401 - a fixture
from tests.e2e.harness import (
    ServerProcess,
    free_port,
    free_udp_port,
    make_token,
    start_server,
)
from tests.e2e.sdk import EventLog, joined
from tests.e2e.test_media import SAMPLE_RATE, publishing_tone

#: Longest silence the listener may hear while the server is under attack.
MAX_GAP_S = 1.5


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in str(item.fspath):
            item.add_marker(pytest.mark.reliability)
            item.add_marker(pytest.mark.sdk)


@dataclass
class Media:
    """What the listener heard: arrival times of decoded audio frames."""

    arrivals: list[float] = field(default_factory=list)
    reconnects: int = 0

    def longest_gap(self, since: float) -> float:
        times = [since, *(t for t in self.arrivals if t >= since), time.monotonic()]
        return max(b - a for a, b in itertools.pairwise(times))


@dataclass
class Victim:
    """A room with a talking SDK participant and a listening one."""

    server: ServerProcess
    room: str
    media: Media

    def assert_unharmed(self, since: float) -> None:
        gap = self.media.longest_gap(since)
        assert gap < MAX_GAP_S, f"the listener heard nothing for {gap:.1f} s"
        assert self.media.reconnects == 0, "the listener had to reconnect"
        assert "Traceback" not in self.server.logs(), self.server.logs()[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per module on a known UDP port (the datagram fuzzing aims at it)."""
    port, metrics_port = free_udp_port(), free_port()
    config = f"rtc:\n  udp_port: {port}\nprometheus_port: {metrics_port}\n"
    proc = start_server(tmp_path_factory.mktemp("server"), config, udp_port=False)
    proc.udp_port = port
    proc.metrics_port = metrics_port
    yield proc
    assert_clean_exit(proc)


async def _listen(track: rtc.Track, media: Media) -> None:
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
    try:
        async for _ in stream:
            media.arrivals.append(time.monotonic())
    finally:
        await stream.aclose()


@asynccontextmanager
async def media_keeps_flowing(server: ServerProcess, room: str) -> AsyncIterator[Victim]:
    """A speaker and a listener in ``room`` for as long as the block runs; the block's
    caller checks :meth:`Victim.assert_unharmed` (after its own attack)."""
    media = Media()
    async with joined(server, "speaker", room) as speaker, publishing_tone(speaker):
        listener = rtc.Room()
        subscribed = EventLog(listener, "track_subscribed")

        def reconnecting() -> None:
            media.reconnects += 1

        listener.on("reconnecting", reconnecting)
        await asyncio.wait_for(listener.connect(server.ws_url, make_token("listener", room)), 15)
        task: asyncio.Task[None] | None = None
        try:
            track, _, _ = await subscribed.wait_for()
            task = asyncio.get_running_loop().create_task(_listen(track, media))
            while not media.arrivals:  # noqa: ASYNC110 - audio frames have no event to await
                await asyncio.sleep(0.05)
            yield Victim(server, room, media)
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await listener.disconnect()
