"""Tunnels between nodes over the message bus: signal sessions and API calls.

A client's WebSocket may land on any node (the *edge*); its room lives on one node (the
*host*). The edge sends a :class:`StartSession` to the host's signal channel, then both ends
exchange frames on two channels named after the connection, as LiveKit relays signalling with
psrpc ``Signal.RelaySignal`` streams. The frames are the client's own WebSocket frames, so the
host runs the very same session code as for a local client.

Each direction is sent by one task, which keeps frames in order (Redis keeps the order of one
connection's publishes). Both ends send a keepalive every few seconds and give up on a silent
peer, so a dead node never leaves a session behind.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import secrets
from dataclasses import asdict, dataclass

from protocol.ids import CONNECTION_PREFIX
from routing.bus import BusClosedError, MessageBus, Subscription

logger = logging.getLogger(__name__)

KEEPALIVE_S = 3.0
#: A peer silent for this long is gone (its node died or lost the bus).
PEER_TIMEOUT_S = 10.0
#: Frames queued for sending before the link gives up on a stuck bus.
SEND_QUEUE = 4096


class Frame(enum.Enum):
    """The first byte of every tunnel message."""

    BINARY = b"B"
    """A WebSocket binary frame (protobuf)."""
    TEXT = b"T"
    """A WebSocket text frame (protojson), UTF-8."""
    REFUSED = b"E"
    """The host refused the session before it started: JSON {status, reason}."""
    CLOSE = b"C"
    """The sender closed its end."""
    KEEPALIVE = b"K"


def signal_channel(node_id: str) -> str:
    return f"node:{node_id}:signal"


def rpc_channel(node_id: str) -> str:
    return f"node:{node_id}:rpc"


def _link_channels(connection_id: str) -> tuple[str, str]:
    return f"relay:{connection_id}:up", f"relay:{connection_id}:down"


@dataclass(frozen=True)
class StartSession:
    """What the host needs to run a client's session: the request as the edge received it."""

    connection_id: str
    edge_node: str
    authorization: str
    """The ``Authorization`` header, verified again by the host (keys are shared)."""
    query: str
    """The raw query string of ``/rtc``."""

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> StartSession:
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise ValueError("start session must be a JSON object")
        try:
            return cls(**{k: str(obj[k]) for k in cls.__dataclass_fields__})
        except KeyError as exc:
            raise ValueError(f"start session lacks {exc}") from None


class LinkClosedError(Exception):
    """The peer closed the link, went silent, or the bus went away."""


class RelayLink:
    """One end of a tunnel: ordered sending, receiving with a liveness deadline."""

    def __init__(self, bus: MessageBus, send_channel: str, inbox: Subscription) -> None:
        self._bus = bus
        self._send_channel = send_channel
        self._inbox = inbox
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue(SEND_QUEUE)
        loop = asyncio.get_running_loop()
        self._sender = loop.create_task(self._send_loop(), name="relay-send")
        self._keepalive = loop.create_task(self._keepalive_loop(), name="relay-keepalive")
        self.closed = False

    def send(self, kind: Frame, payload: bytes = b"") -> None:
        if self.closed:
            return
        try:
            self._outbox.put_nowait(kind.value + payload)
        except asyncio.QueueFull:
            logger.warning("relay to %s is stuck; closing it", self._send_channel)
            self._shut()

    async def receive(self) -> tuple[Frame, bytes]:
        """The next frame from the peer (keepalives skipped); LinkClosedError at the end."""
        while True:
            try:
                async with asyncio.timeout(PEER_TIMEOUT_S):
                    data = await self._inbox.get()
            except (TimeoutError, BusClosedError):
                raise LinkClosedError(self._inbox.channel) from None
            try:
                kind = Frame(data[:1])
            except ValueError:
                logger.debug("x unknown relay frame %r dropped", data[:1])
                continue
            if kind is Frame.KEEPALIVE:
                continue
            if kind is Frame.CLOSE:
                raise LinkClosedError(self._inbox.channel)
            return kind, data[1:]

    async def _send_loop(self) -> None:
        while (data := await self._outbox.get()) is not None:
            try:
                await self._bus.publish(self._send_channel, data)
            except Exception as exc:  # the bus is down: the frame is lost, the link lives on
                logger.warning("relay publish to %s failed: %s", self._send_channel, exc)

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            self.send(Frame.KEEPALIVE)

    def _shut(self) -> None:
        if not self.closed:
            self.closed = True
            self._keepalive.cancel()
            while self._outbox.full():
                self._outbox.get_nowait()
            self._outbox.put_nowait(None)

    async def close(self, *, notify: bool = True) -> None:
        """Tell the peer (unless it is the one that closed) and release everything."""
        if notify and not self.closed:
            self.send(Frame.CLOSE)
        self._shut()
        try:
            async with asyncio.timeout(2.0):
                await asyncio.shield(self._sender)
        except TimeoutError:
            self._sender.cancel()
        await asyncio.gather(self._sender, self._keepalive, return_exceptions=True)
        await self._inbox.close()


async def open_edge_link(bus: MessageBus, host_node: str, start: StartSession) -> RelayLink:
    """The edge's end: subscribe first, then ask the host to start the session."""
    up, down = _link_channels(start.connection_id)
    inbox = await bus.subscribe(down)
    link = RelayLink(bus, up, inbox)
    await bus.publish(signal_channel(host_node), start.encode())
    return link


async def open_host_link(bus: MessageBus, start: StartSession) -> RelayLink:
    up, down = _link_channels(start.connection_id)
    return RelayLink(bus, down, await bus.subscribe(up))


def new_connection_id() -> str:
    return CONNECTION_PREFIX + secrets.token_hex(8)
