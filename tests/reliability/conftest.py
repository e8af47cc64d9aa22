"""The reliability tier: abuse from one client must not hurt anyone else.

Every test runs beside a real SDK publisher and listener in the attacked room
(:func:`media_keeps_flowing`), and the server's log must hold no traceback.
"""

from __future__ import annotations

import asyncio
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
from tests.e2e.sdk import EventLog, Hearing, joined, wait_until
from tests.e2e.test_media import publishing_tone

#: Longest silence the listener may hear while the server is under attack.
MAX_GAP_S = 1.5


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in str(item.fspath):
            item.add_marker(pytest.mark.reliability)
            item.add_marker(pytest.mark.sdk)


@dataclass
class Victim:
    """A room with a talking SDK participant and a listening one."""

    server: ServerProcess
    room: str
    hearing: Hearing
    reconnects: list[float] = field(default_factory=list)

    def assert_unharmed(self, since: float) -> None:
        gap = self.hearing.longest_gap(since)
        assert gap < MAX_GAP_S, f"the listener heard nothing for {gap:.1f} s"
        assert not self.reconnects, "the listener had to reconnect"
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


@asynccontextmanager
async def media_keeps_flowing(server: ServerProcess, room: str) -> AsyncIterator[Victim]:
    """A speaker and a listener in ``room`` for as long as the block runs; the block's
    caller checks :meth:`Victim.assert_unharmed` (after its own attack)."""
    async with joined(server, "speaker", room) as speaker, publishing_tone(speaker):
        listener = rtc.Room()
        subscribed = EventLog(listener, "track_subscribed")
        reconnects: list[float] = []
        listener.on("reconnecting", lambda: reconnects.append(time.monotonic()))
        await asyncio.wait_for(listener.connect(server.ws_url, make_token("listener", room)), 15)
        hearing: Hearing | None = None
        try:
            track, _, _ = await subscribed.wait_for()
            hearing = Hearing(track)
            await wait_until(lambda: bool(hearing and hearing.arrivals))
            yield Victim(server, room, hearing, reconnects)
        finally:
            if hearing is not None:
                await hearing.close()
            await listener.disconnect()
