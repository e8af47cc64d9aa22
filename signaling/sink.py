"""The signal sink of one WebSocket: a bounded queue of responses drained by one writer task.

Responses go out as binary protobuf, or as protojson once the client has sent a text frame
(LiveKit ``wsprotocol.go``). A participant's info that changes again before the previous
change was written replaces it in the queue: a client needs the latest version, not each
step (LiveKit sends only the newest ``ParticipantInfo`` per participant and drops older
versions). So one participant updating its metadata over and over costs everyone else one
pending update, not a queue that grows until they are cut off.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from google.protobuf import json_format
from livekit.protocol import rtc

from signaling.socket import SignalSocket

#: Responses, and their bytes, queued for a client that does not read; past either it is
#: disconnected and what was queued for it is dropped.
MAX_QUEUED_RESPONSES = 4096
MAX_QUEUED_BYTES = 32 * 1024 * 1024
#: A write the client has not taken within this long (its TCP window stays shut) ends it.
WRITE_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 5.0


class _Queued:
    __slots__ = ("key", "response", "size")

    def __init__(self, response: rtc.SignalResponse, size: int, key: str | None) -> None:
        self.response = response
        self.size = size
        self.key = key
        """The participant sid of a one-participant update (it may be replaced), else None."""


def _update_of(response: rtc.SignalResponse) -> tuple[str, int] | None:
    """(sid, version) of a response that updates one participant."""
    if response.WhichOneof("message") != "update" or len(response.update.participants) != 1:
        return None
    info = response.update.participants[0]
    return info.sid, info.version


class WebSocketSink:
    """Queues responses without blocking; one writer task writes them in order."""

    def __init__(self, ws: SignalSocket, log: logging.LoggerAdapter[logging.Logger]):
        self._ws = ws
        self._log = log
        self._queue: asyncio.Queue[_Queued | None] = asyncio.Queue()
        self._queued_bytes = 0
        self._pending_updates: dict[str, _Queued] = {}
        self.encoding: Literal["binary", "json"] = "binary"
        self._closing = False

    def send(self, response: rtc.SignalResponse) -> None:
        if self._closing:
            return
        update = _update_of(response)
        if update is not None and self._replace_pending(response, *update):
            return
        size = response.ByteSize()
        too_many = self._queue.qsize() >= MAX_QUEUED_RESPONSES
        if too_many or self._queued_bytes + size > MAX_QUEUED_BYTES:
            self._log.warning(
                "signal client is not reading (%d responses, %d bytes queued); closing its "
                "connection",
                self._queue.qsize(),
                self._queued_bytes,
            )
            self._drop_queued()
            self.close()
            return
        queued = _Queued(response, size, update[0] if update is not None else None)
        if queued.key is not None:
            self._pending_updates[queued.key] = queued
        self._queued_bytes += size
        self._queue.put_nowait(queued)

    def _replace_pending(self, response: rtc.SignalResponse, sid: str, version: int) -> bool:
        """True when ``response`` took the place of a pending update of the same participant
        (or was older than it, so is not needed)."""
        pending = self._pending_updates.get(sid)
        if pending is None:
            return False
        pending_update = _update_of(pending.response)
        if pending_update is None or version >= pending_update[1]:
            size = response.ByteSize()
            self._queued_bytes += size - pending.size
            pending.response, pending.size = response, size
        return True

    def _drop_queued(self) -> None:
        """Free what a client that does not read would never take."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self._pending_updates.clear()
        self._queued_bytes = 0

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._queue.put_nowait(None)

    async def run_writer(self) -> None:
        """Write queued responses until closed, then close the WebSocket."""
        try:
            while (queued := await self._queue.get()) is not None:
                if queued.key is not None and self._pending_updates.get(queued.key) is queued:
                    del self._pending_updates[queued.key]
                self._queued_bytes -= queued.size
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await self._write(queued.response)
        except ConnectionError:
            self._log.debug("signal connection lost while writing")
        except TimeoutError:
            self._log.warning("signal client took no data for %.0f s; closing", WRITE_TIMEOUT_S)
        finally:
            self._closing = True
            self._drop_queued()
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._ws.close()
            except TimeoutError:
                self._ws.abort()  # the close frame itself cannot be written

    async def _write(self, response: rtc.SignalResponse) -> None:
        if self.encoding == "json":
            await self._ws.send_str(json_format.MessageToJson(response, indent=None))
        else:
            await self._ws.send_bytes(response.SerializeToString())
