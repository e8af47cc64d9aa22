"""Helpers around the official ``livekit`` SDK: connect participants, wait for events."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

from livekit import rtc

from tests.e2e.harness import ServerProcess, make_token

EVENT_TIMEOUT_S = 15.0


class EventLog:
    """Records every payload of one room event so tests can wait for a matching one."""

    def __init__(self, room: rtc.Room, event: str) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()
        room.on(cast(Any, event), self._record)

    def _record(self, *args: Any) -> None:
        self.items.append(args[0] if len(args) == 1 else args)
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[Any], bool] = lambda _: True, within_s: float = EVENT_TIMEOUT_S
    ) -> Any:
        async def scan() -> Any:
            while True:
                for item in self.items:
                    if predicate(item):
                        return item
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(scan(), within_s)


async def connect(
    server: ServerProcess,
    identity: str,
    room: str,
    *,
    options: rtc.RoomOptions | None = None,
    **grants: Any,
) -> rtc.Room:
    participant = rtc.Room()
    token = make_token(identity, room, **grants)
    await asyncio.wait_for(
        participant.connect(server.ws_url, token, options or rtc.RoomOptions()), EVENT_TIMEOUT_S
    )
    return participant


@asynccontextmanager
async def joined(
    server: ServerProcess, identity: str, room: str, **grants: Any
) -> AsyncIterator[rtc.Room]:
    participant = await connect(server, identity, room, **grants)
    try:
        yield participant
    finally:
        await participant.disconnect()


@asynccontextmanager
async def watching(
    server: ServerProcess,
    identity: str,
    room: str,
    *events: str,
    options: rtc.RoomOptions | None = None,
) -> AsyncIterator[tuple[rtc.Room, dict[str, EventLog]]]:
    """Join with event logs registered before connecting, so no early event is missed."""
    participant = rtc.Room()
    logs = {event: EventLog(participant, event) for event in events}
    token = make_token(identity, room)
    await asyncio.wait_for(
        participant.connect(server.ws_url, token, options or rtc.RoomOptions()), EVENT_TIMEOUT_S
    )
    try:
        yield participant, logs
    finally:
        await participant.disconnect()


async def wait_until(condition: Callable[[], bool], within_s: float = EVENT_TIMEOUT_S) -> None:
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 - SDK state has no event to await
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), within_s)


class Hearing:
    """Arrival times of the audio frames a participant decodes from one track."""

    def __init__(self, track: rtc.Track) -> None:
        self.arrivals: list[float] = []
        self._task = asyncio.get_running_loop().create_task(self._run(track))

    async def _run(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
        try:
            async for _ in stream:
                self.arrivals.append(time.monotonic())
        finally:
            await stream.aclose()

    def longest_gap(self, since: float) -> float:
        times = [since, *(t for t in self.arrivals if t >= since), time.monotonic()]
        return max(b - a for a, b in itertools.pairwise(times))

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
