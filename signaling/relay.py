"""Signal sessions whose room is on another node, from both ends.

The edge (the node the client's WebSocket reached) asks the host for the session and, as
LiveKit's ``rtcservice.go startConnection`` does, upgrades the client's connection only once
the host's first response (the JoinResponse) is there; a refusal becomes the HTTP status. Then
it copies frames both ways. The host runs the session as for a local client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web
from multidict import CIMultiDict, MultiDict

from routing.bus import MessageBus, Subscription
from routing.relay import (
    Frame,
    LinkClosedError,
    RelayLink,
    StartSession,
    new_connection_id,
    open_edge_link,
    open_host_link,
    signal_channel,
)
from signaling.auth import HttpError
from signaling.socket import RelayedSocket

logger = logging.getLogger(__name__)

#: How long the edge waits for the host's JoinResponse (LiveKit tries 3 s, 4 s, 5 s).
JOIN_TIMEOUT_S = 10.0

#: Runs one session on this node: the request's headers and query, and its socket.
SessionRunner = Callable[[CIMultiDict[str], MultiDict[str], RelayedSocket], Awaitable[None]]


async def relay_to_host(
    bus: MessageBus,
    node_id: str,
    host: str,
    request: web.Request,
    ws: web.WebSocketResponse,
) -> web.WebSocketResponse:
    start = StartSession(
        connection_id=new_connection_id(),
        edge_node=node_id,
        authorization=request.headers.get("Authorization", ""),
        query=request.query_string,
    )
    link = await open_edge_link(bus, host, start)
    try:
        try:
            async with asyncio.timeout(JOIN_TIMEOUT_S):
                kind, payload = await link.receive()
        except (TimeoutError, LinkClosedError):
            raise HttpError(503, f"node {host} hosting the room did not answer") from None
        if kind is Frame.REFUSED:
            raise _refusal(payload)
        await ws.prepare(request)
        logger.debug("relaying %s to node %s", start.connection_id, host)
        await _write(ws, kind, payload)
        await _pump(ws, link)
    finally:
        await link.close()
        if ws.prepared:
            await ws.close()
    return ws


def _refusal(payload: bytes) -> HttpError:
    try:
        refusal = json.loads(payload)
        return HttpError(int(refusal["status"]), str(refusal["reason"]))
    except (ValueError, KeyError, TypeError):
        return HttpError(502, "the node hosting the room answered garbage")


async def _write(ws: web.WebSocketResponse, kind: Frame, payload: bytes) -> None:
    if kind is Frame.BINARY:
        await ws.send_bytes(payload)
    elif kind is Frame.TEXT:
        await ws.send_str(payload.decode(errors="replace"))


async def _pump(ws: web.WebSocketResponse, link: RelayLink) -> None:
    """Copy frames both ways until either end stops."""

    async def down() -> None:
        try:
            while True:
                kind, payload = await link.receive()
                await _write(ws, kind, payload)
        except (LinkClosedError, ConnectionError):
            return

    async def up() -> None:
        async for message in ws:
            if message.type is WSMsgType.BINARY:
                link.send(Frame.BINARY, message.data)
            elif message.type is WSMsgType.TEXT:
                link.send(Frame.TEXT, message.data.encode())
            else:
                return

    tasks = [asyncio.ensure_future(down()), asyncio.ensure_future(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class HostRelayServer:
    """Runs the sessions other nodes relay to this one."""

    def __init__(self, bus: MessageBus, node_id: str, run_session: SessionRunner) -> None:
        self._bus = bus
        self._node_id = node_id
        self._run_session = run_session
        self._inbox: Subscription | None = None
        self._listener: asyncio.Task[None] | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._inbox = await self._bus.subscribe(signal_channel(self._node_id))
        self._listener = asyncio.get_running_loop().create_task(
            self._listen(self._inbox), name="relay-host"
        )

    async def _listen(self, inbox: Subscription) -> None:
        async for data in inbox:
            try:
                start = StartSession.decode(data)
            except ValueError as exc:
                logger.warning("x relayed session dropped: %s", exc)
                continue
            task = asyncio.get_running_loop().create_task(self._host(start), name="relayed-session")
            self._sessions.add(task)
            task.add_done_callback(self._sessions.discard)

    async def _host(self, start: StartSession) -> None:
        link = await open_host_link(self._bus, start)
        socket = RelayedSocket(link)
        headers: CIMultiDict[str] = CIMultiDict()
        if start.authorization:
            headers["Authorization"] = start.authorization
        query = MultiDict(parse_qsl(start.query, keep_blank_values=True))
        try:
            await self._run_session(headers, query, socket)
        except HttpError as exc:
            socket.refuse(exc.status, exc.reason)
        except Exception:
            logger.exception("relayed session %s failed", start.connection_id)
            socket.refuse(500, "internal error")
        finally:
            await link.close()

    async def stop(self) -> None:
        """Stop taking sessions; running ones end with their rooms."""
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._inbox is not None:
            await self._inbox.close()

    async def wait_closed(self) -> None:
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=5.0)
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
