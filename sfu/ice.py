"""ICE-lite (RFC 8445 section 2.5) over UDP sockets and ICE-TCP (RFC 6544, passive).

The server never sends connectivity checks: it answers the client's binding requests for a
local username fragment it issued, learns the client's address (a UDP address or a TCP
connection) from the authenticated request, and from then on hands that path's datagrams (DTLS,
SRTP) to the session (RFC 7983 first-byte demultiplexing). A session whose consent checks stop
for 30 s fails (RFC 7675).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import struct
import time
from collections.abc import Callable
from typing import Protocol, cast

from aioice import stun

from sfu.guard import (
    DROPPED,
    FIRST_REQUEST_TIMEOUT_S,
    ICE_TCP_IDLE_TIMEOUT_S,
    LOG_INTERVAL_S,
    SourceLimiter,
    Throttle,
)

try:  # the optional C accelerator (sfu/_fastsend.c); without it, one sendto per datagram
    from sfu import _fastsend
except ImportError:  # pragma: no cover - depends on the build
    _fastsend = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)


class MalformedDrops:
    """Packets from the network dropped because they do not parse, by protocol: counted for
    the metrics, logged at most once per interval with what was seen since."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._throttle = Throttle(LOG_INTERVAL_S)

    def drop(self, protocol: str, peer: Address, error: Exception, now: float) -> None:
        self.counts[protocol] = self.counts.get(protocol, 0) + 1
        dropped = self._throttle.due(now)
        if dropped:
            logger.warning(
                "dropped %d malformed packet(s); last: %s from %s:%d (%s: %s)",
                dropped,
                protocol,
                peer[0],
                peer[1],
                type(error).__name__,
                error,
            )


MALFORMED = MalformedDrops()
"""The node's malformed-packet counts (``livekit_malformed_packet_total``)."""

#: Most datagrams handed to the kernel in one sendmmsg(2) (the C helper's array size).
MAX_BATCH = 256

#: RFC 7675: consent expires 30 s after the last authenticated check.
CONSENT_TIMEOUT_S = 30.0
CONSENT_CHECK_INTERVAL_S = 5.0
#: A TCP frame is at most 64 KiB (RFC 4571's 16-bit length).
_MAX_TCP_BUFFER = 4 * 65536
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

Address = tuple[str, int]


class IceState(enum.Enum):
    NEW = "new"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


class Path(Protocol):
    """Where a session's packets go once a check selected it: a UDP address or a TCP stream."""

    def send(self, data: bytes) -> None: ...

    def attach(self, session: IceSession) -> None:
        """Route this path's incoming non-STUN packets to ``session``."""

    def detach(self, session: IceSession) -> None: ...

    def udp_destination(self) -> UdpDestination | None:
        """(socket fd, address, spill) for the C fan-out's batched send; None for TCP, or when
        the socket has no batching."""


#: A UDP path as the C fan-out sends on it: the socket, the client's address, and where a
#: datagram the kernel did not take goes (the event loop's own send).
UdpDestination = tuple[int, "Address", Callable[[bytes, "Address"], None]]


def random_string(length: int) -> str:
    """An ICE ufrag or password (RFC 8445 5.3: ice-chars, enough randomness)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def binding_success(request: stun.Message, address: Address, key: bytes) -> bytes:
    """The success response to an authenticated binding request (RFC 8489 7.3.1), signed with
    ``key`` and naming the address it came from."""
    response = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=request.transaction_id,
    )
    response.attributes["XOR-MAPPED-ADDRESS"] = address
    response.add_message_integrity(key)
    response.add_fingerprint()
    return bytes(response)


class IceSession:
    """One ICE-lite transport: credentials, the selected path, consent."""

    def __init__(self, registry: IceRegistry, name: str) -> None:
        self.local_ufrag = random_string(8)
        self.local_pwd = random_string(24)
        self.name = name
        self.selected: Path | None = None
        self.state = IceState.NEW
        self.last_consent = time.monotonic()
        self.on_datagram: Callable[[bytes], None] | None = None
        self.on_state_change: Callable[[IceState], None] | None = None
        self.on_path_change: Callable[[], None] | None = None
        """Told when checks select another path (the fan-out sends on the selected one)."""
        self._registry = registry
        self.passwords: dict[str, str] = {self.local_ufrag: self.local_pwd}
        """Every local ufrag still answered, with its password: after an ICE restart the old
        credentials keep working until the client checks with the new ones."""

    def restart(self) -> None:
        """New local credentials (RFC 8445 9, ICE restart); media stays on the selected path
        until a check with the new ones nominates one."""
        self.local_ufrag, self.local_pwd = random_string(8), random_string(24)
        self.passwords[self.local_ufrag] = self.local_pwd
        self._registry.add_alias(self, self.local_ufrag)
        logger.debug("ice %s: restarted with ufrag %s", self.name, self.local_ufrag)

    def forget_old_credentials(self, ufrag: str) -> None:
        """The client checked with ``ufrag``: credentials older than it are no longer needed."""
        if ufrag != self.local_ufrag or len(self.passwords) == 1:
            return
        for old in [u for u in self.passwords if u != ufrag]:
            del self.passwords[old]
            self._registry.remove_alias(old)

    def set_state(self, state: IceState) -> None:
        if state is self.state:
            return
        logger.debug(
            "ice %s %s: %s -> %s", self.name, self.local_ufrag, self.state.value, state.value
        )
        self.state = state
        if self.on_state_change is not None:
            self.on_state_change(state)

    def handle_check(self, path: Path, nominated: bool, now: float) -> None:
        """An authenticated binding request arrived on ``path``.

        libwebrtc nominates with USE-CANDIDATE; before that, the first path that passes a check
        is used so DTLS can start at once.
        """
        if self.state in (IceState.CLOSED, IceState.FAILED):
            return
        self.last_consent = now
        switched = self.selected is None or (nominated and path is not self.selected)
        if switched:
            if self.selected is not None:
                # The client moved (NAT rebinding, another network, an ICE restart): rare
                # enough to say, and the first thing to look for when media stops.
                logger.info("ice %s: client moved from %r to %r", self.name, self.selected, path)
                self.selected.detach(self)
            path.attach(self)
            self.selected = path
        self.set_state(IceState.CONNECTED)
        if switched and self.on_path_change is not None:
            self.on_path_change()

    def receive(self, data: bytes) -> None:
        if self.on_datagram is not None:
            self.on_datagram(data)

    def send(self, data: bytes) -> None:
        if self.selected is not None and self.state is IceState.CONNECTED:
            self.selected.send(data)

    def close(self) -> None:
        self._registry.remove(self)
        for ufrag in list(self.passwords):
            self._registry.remove_alias(ufrag)
        if self.selected is not None:
            self.selected.detach(self)
        self.set_state(IceState.CLOSED)


class IceRegistry:
    """Every ICE session of the node, by local ufrag; answers binding requests for them."""

    def __init__(self) -> None:
        self._by_ufrag: dict[str, IceSession] = {}
        self._consent_task: asyncio.Task[None] | None = None

    def create_session(self, name: str) -> IceSession:
        session = IceSession(self, name)
        self._by_ufrag[session.local_ufrag] = session
        return session

    def remove(self, session: IceSession) -> None:
        self._by_ufrag.pop(session.local_ufrag, None)

    def add_alias(self, session: IceSession, ufrag: str) -> None:
        self._by_ufrag[ufrag] = session

    def remove_alias(self, ufrag: str) -> None:
        self._by_ufrag.pop(ufrag, None)

    @property
    def session_count(self) -> int:
        return len(self._by_ufrag)

    def handle_stun(self, data: bytes, addr: Address, path: Path) -> bytes | None:
        """Answer a binding request (RFC 8489, RFC 8445 section 7.3) for one of our sessions;
        returns the response to send back on the same path, or None to drop the packet."""
        try:
            message = stun.parse_message(data)
        except Exception as exc:
            # aioice raises ValueError, struct.error, IndexError... on garbage (an integer
            # attribute of the wrong length): one such datagram must cost nothing but a count.
            MALFORMED.drop("stun", addr, exc, time.monotonic())
            return None
        if (message.message_method, message.message_class) != (
            stun.Method.BINDING,
            stun.Class.REQUEST,
        ):
            return None  # ICE-lite sends no checks, so expects no responses
        username = str(message.attributes.get("USERNAME", ""))
        local_ufrag = username.split(":", 1)[0]
        session = self._by_ufrag.get(local_ufrag)
        password = session.passwords.get(local_ufrag) if session is not None else None
        if session is None or password is None:
            return None
        key = password.encode()
        try:
            authentic = message.check_message_integrity(key)
        except Exception as exc:  # a garbled MESSAGE-INTEGRITY is garbage too
            MALFORMED.drop("stun", addr, exc, time.monotonic())
            return None
        if not authentic:
            logger.debug("x STUN integrity check failed from %s", addr)
            return None
        session.handle_check(path, "USE-CANDIDATE" in message.attributes, time.monotonic())
        session.forget_old_credentials(local_ufrag)
        return binding_success(message, addr, key)

    def start(self) -> None:
        self._consent_task = asyncio.get_running_loop().create_task(
            self._expire_consent_forever(), name="ice-consent"
        )

    async def stop(self) -> None:
        if self._consent_task is not None:
            self._consent_task.cancel()
            await asyncio.gather(self._consent_task, return_exceptions=True)

    async def _expire_consent_forever(self) -> None:
        while True:
            await asyncio.sleep(CONSENT_CHECK_INTERVAL_S)
            self.expire_consent(time.monotonic())

    def expire_consent(self, now: float) -> None:
        """Fail the sessions whose client stopped checking (RFC 7675 consent freshness)."""
        for session in list(self._by_ufrag.values()):
            connected = session.state is IceState.CONNECTED
            if connected and now - session.last_consent > CONSENT_TIMEOUT_S:
                logger.info("ice %s: consent expired", session.name)
                session.set_state(IceState.FAILED)


class _UdpPath:
    __slots__ = ("addr", "mux")

    def __init__(self, mux: UdpMux, addr: Address) -> None:
        self.mux = mux
        self.addr = addr

    def __repr__(self) -> str:
        return f"udp {self.addr[0]}:{self.addr[1]}"

    def send(self, data: bytes) -> None:
        self.mux.sendto(data, self.addr)

    def attach(self, session: IceSession) -> None:
        self.mux.routes[self.addr] = session
        self.mux.paths[self.addr] = self

    def detach(self, session: IceSession) -> None:
        if self.mux.routes.get(self.addr) is session:
            del self.mux.routes[self.addr]
            self.mux.paths.pop(self.addr, None)

    def udp_destination(self) -> UdpDestination | None:
        if self.mux.fd < 0:
            return None
        return self.mux.fd, self.addr, self.mux.sendto


class UdpMux(asyncio.DatagramProtocol):
    """One UDP socket: STUN to the registry, everything else by source address.

    While one received packet is handled, what it makes us send on this socket (a
    publisher's packet fanned out to every subscriber sharing the port) is collected and
    handed to the kernel in one sendmmsg(2) when the C helper is built.
    """

    def __init__(self, registry: IceRegistry, *, batch: bool = True) -> None:
        self.registry = registry
        self.routes: dict[Address, IceSession] = {}
        self.paths: dict[Address, _UdpPath] = {}
        """The selected paths, by address: a check from one must find the same object. Only
        selected ones are kept (a path per address ever seen would grow with every join)."""
        self._transport: asyncio.DatagramTransport | None = None
        self._batching = batch and _fastsend is not None
        self.fd = -1
        self._batch: list[tuple[bytes, Address]] | None = None
        self._pending: list[tuple[bytes, Address]] = []
        """The one list every batch is collected in (no list per received packet)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport quacks like asyncio.DatagramTransport without subclassing it.
        self._transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if self._batching and sock is not None:
            self.fd = sock.fileno()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (a client that went away) must not stop the socket.
        logger.debug("x udp error: %s", exc)

    def sendto(self, data: bytes, addr: Address) -> None:
        batch = self._batch
        if batch is not None:
            batch.append((data, addr))
        elif self._transport is not None:
            self._transport.sendto(data, addr)

    def _receive_batched(self, session: IceSession, data: bytes) -> None:
        batch = self._batch = self._pending
        try:
            session.receive(data)
        finally:
            self._batch = None
            if batch:
                try:
                    self._flush(batch)
                finally:
                    batch.clear()

    def _flush(self, batch: list[tuple[bytes, Address]]) -> None:
        transport = self._transport
        if transport is None:
            return
        count = len(batch)
        sent = 0
        # The kernel first, unless the loop already queued datagrams (keep their order).
        if count > 1 and not cast(asyncio.WriteTransport, transport).get_write_buffer_size():
            if count <= MAX_BATCH:
                sent = _fastsend.send_batch(self.fd, batch)
            else:
                while sent < count:
                    chunk = batch[sent : sent + MAX_BATCH]
                    taken = _fastsend.send_batch(self.fd, chunk)
                    sent += taken
                    if taken < len(chunk):
                        break
        for index in range(sent, count):
            # EAGAIN or a datagram the kernel refused: the loop buffers or reports it.
            transport.sendto(*batch[index])

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if not data:
            return
        if data[0] < 4:  # RFC 7983: 0-3 is STUN
            path = self.paths.get(addr) or _UdpPath(self, addr)
            response = self.registry.handle_stun(data, addr, path)
            if response is not None:
                self.sendto(response, addr)
            return
        session = self.routes.get(addr)
        if session is not None:
            if self.fd >= 0:
                self._receive_batched(session, data)
            else:
                session.receive(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class TcpIceConnection(asyncio.Protocol):
    """One passive ICE-TCP connection (RFC 6544), packets framed as in RFC 4571.

    Closed when it has not been authenticated by a binding request for one of our sessions
    within :data:`FIRST_REQUEST_TIMEOUT_S`, or stays silent for :data:`ICE_TCP_IDLE_TIMEOUT_S`
    (a connection holding a partial frame is silent too); refused over the per-source cap.
    """

    def __init__(self, registry: IceRegistry, limiter: SourceLimiter | None = None) -> None:
        self.registry = registry
        self.session: IceSession | None = None
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._peer: Address = ("0.0.0.0", 0)
        self._limiter = limiter
        self._admitted = False
        self._authenticated = False
        """A binding request for one of our sessions arrived (nominated or not)."""
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"tcp {self._peer[0]}:{self._peer[1]}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = (str(peer[0]), int(peer[1])) if peer else ("0.0.0.0", 0)
        if self._limiter is not None:
            if not self._limiter.admit(self._peer[0]):
                self._transport.abort()
                return
            self._admitted = True
        loop = asyncio.get_running_loop()
        self._last_data = loop.time()
        self._timer = loop.call_later(FIRST_REQUEST_TIMEOUT_S, self._check_alive)

    def _check_alive(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        loop = asyncio.get_running_loop()
        if not self._authenticated:
            DROPPED["first_request_timeout"] += 1
            self._transport.abort()
            return
        silent = loop.time() - self._last_data
        if silent >= ICE_TCP_IDLE_TIMEOUT_S:
            DROPPED["idle_timeout"] += 1
            self._transport.abort()
            return
        self._timer = loop.call_later(ICE_TCP_IDLE_TIMEOUT_S - silent, self._check_alive)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            self._last_data = asyncio.get_running_loop().time()
        self._buffer += data
        while len(self._buffer) >= 2:
            (length,) = struct.unpack_from("!H", self._buffer)
            if len(self._buffer) < 2 + length:
                break
            frame = bytes(self._buffer[2 : 2 + length])
            del self._buffer[: 2 + length]
            self._frame_received(frame)
        if len(self._buffer) > _MAX_TCP_BUFFER and self._transport is not None:
            self._transport.close()

    def _frame_received(self, frame: bytes) -> None:
        if not frame:
            return
        if frame[0] < 4:
            response = self.registry.handle_stun(frame, self._peer, self)
            if response is not None:
                self._authenticated = True
                self.send(response)
        elif self.session is not None:
            self.session.receive(frame)

    def send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(struct.pack("!H", len(data)) + data)

    def attach(self, session: IceSession) -> None:
        self.session = session

    def detach(self, session: IceSession) -> None:
        if self.session is session:
            self.session = None

    def udp_destination(self) -> UdpDestination | None:
        return None  # RFC 4571 framing: the Python send

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._admitted and self._limiter is not None:
            self._admitted = False
            self._limiter.release(self._peer[0])
