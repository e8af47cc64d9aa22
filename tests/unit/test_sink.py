"""The signal sink: in order, one pending update per participant, bounded, never blocking."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import WSMessage
from livekit.protocol import models, rtc

from signaling.sink import MAX_QUEUED_BYTES, WebSocketSink


class SlowSocket:
    """Takes frames only while ``open`` is set (a client that stops reading)."""

    def __init__(self) -> None:
        self.written: list[rtc.SignalResponse] = []
        self.open = asyncio.Event()
        self.closed = False

    async def prepare(self) -> None:
        return None

    async def send_bytes(self, data: bytes) -> None:
        await self.open.wait()
        response = rtc.SignalResponse()
        response.ParseFromString(data)
        self.written.append(response)

    async def send_str(self, data: str) -> None:
        raise AssertionError("binary expected")

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = True
        return True

    def exception(self) -> BaseException | None:
        return None

    def abort(self) -> None:
        self.closed = True

    async def __aiter__(self) -> AsyncIterator[WSMessage]:
        return
        yield  # pragma: no cover


def _update(sid: str, version: int, metadata: str = "") -> rtc.SignalResponse:
    info = models.ParticipantInfo(sid=sid, version=version, metadata=metadata)
    return rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[info]))


async def test_a_participants_pending_update_is_replaced_by_its_newer_version() -> None:
    socket = SlowSocket()
    sink = WebSocketSink(socket, logging.LoggerAdapter(logging.getLogger("test")))
    writer = asyncio.get_running_loop().create_task(sink.run_writer())
    sink.send(_update("PA_first", 1))
    await asyncio.sleep(0)  # the writer takes it and waits for the client
    big = "m" * 500_000
    for version in range(2, 200):  # 100 MB of metadata updates from one participant
        sink.send(_update("PA_spammer", version, big))
    sink.send(rtc.SignalResponse(pong=1))
    sink.send(_update("PA_spammer", 50, big))  # an older version: not needed
    assert sink._queued_bytes < MAX_QUEUED_BYTES // 10, "one pending update, not a queue"
    socket.open.set()
    sink.close()
    await writer
    kinds = [
        (r.WhichOneof("message"), r.update.participants[0].version if r.update.participants else 0)
        for r in socket.written
    ]
    assert kinds == [("update", 1), ("update", 199), ("pong", 0)]
    assert socket.closed
