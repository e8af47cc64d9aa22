"""The signal connection a session runs on: a client's own WebSocket, or one relayed from the
node the client reached (``routing/relay.py``). Both look the same to the session."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from aiohttp import WSMessage, WSMsgType, web

from routing.relay import Frame, LinkClosedError, RelayLink

logger = logging.getLogger(__name__)


class SignalSocket(Protocol):
    async def prepare(self) -> None:
        """Accept the connection (the WebSocket upgrade); before it, errors are HTTP."""

    async def send_bytes(self, data: bytes) -> None: ...
    async def send_str(self, data: str) -> None: ...
    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool: ...
    def exception(self) -> BaseException | None: ...
    def abort(self) -> None:
        """Drop the connection at once, whatever is still unwritten."""

    def __aiter__(self) -> AsyncIterator[WSMessage]: ...


class LocalSocket:
    """The client's WebSocket on this node."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self._request = request

    async def prepare(self) -> None:
        await self.ws.prepare(self._request)

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def send_str(self, data: str) -> None:
        await self.ws.send_str(data)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        return await self.ws.close(code=code, message=message)

    def exception(self) -> BaseException | None:
        return self.ws.exception()

    def abort(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    def __aiter__(self) -> AsyncIterator[WSMessage]:
        return self.ws.__aiter__()


class RelayedSocket:
    """A client's WebSocket held by another node, reached through a relay link."""

    def __init__(self, link: RelayLink) -> None:
        self._link = link
        self._prepared = False

    async def prepare(self) -> None:
        # The edge upgrades the client's connection when our first frame arrives.
        self._prepared = True

    def refuse(self, status: int, reason: str) -> None:
        """Answer the edge's request with an HTTP error instead of a session."""
        self._link.send(Frame.REFUSED, json.dumps({"status": status, "reason": reason}).encode())

    async def send_bytes(self, data: bytes) -> None:
        self._link.send(Frame.BINARY, data)

    async def send_str(self, data: str) -> None:
        self._link.send(Frame.TEXT, data.encode())

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        if self._link.closed:
            return False
        await self._link.close()
        return True

    def exception(self) -> BaseException | None:
        return None

    def abort(self) -> None:
        # Relay frames are queued without waiting, so a close never blocks: nothing to do.
        return None

    async def __aiter__(self) -> AsyncIterator[WSMessage]:
        while True:
            try:
                kind, payload = await self._link.receive()
            except LinkClosedError:
                return
            if kind is Frame.BINARY:
                yield WSMessage(WSMsgType.BINARY, payload, None)
            elif kind is Frame.TEXT:
                yield WSMessage(WSMsgType.TEXT, payload.decode(errors="replace"), None)
