"""ICE-lite (RFC 8445 section 2.5) on one UDP socket shared by every participant.

The server never sends connectivity checks: it answers the client's binding requests for a
local username fragment it issued, learns the client's address from the authenticated request,
and from then on routes that address's datagrams (DTLS, SRTP) to the session (RFC 7983 first-
byte demultiplexing). A session whose consent checks stop for 30 s fails (RFC 7675).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from collections.abc import Callable
from typing import cast

from aioice import stun

logger = logging.getLogger(__name__)

#: RFC 7675: consent expires 30 s after the last authenticated check.
CONSENT_TIMEOUT_S = 30.0
CONSENT_CHECK_INTERVAL_S = 5.0
_UFRAG_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

Address = tuple[str, int]


class IceState(enum.Enum):
    NEW = "new"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


def _random_string(length: int) -> str:
    return "".join(secrets.choice(_UFRAG_ALPHABET) for _ in range(length))


class IceSession:
    """One ICE-lite transport: credentials, the selected client address, consent.

    :param on_datagram: receives every non-STUN datagram from the selected address.
    """

    def __init__(self, mux: UdpMux, name: str) -> None:
        self.local_ufrag = _random_string(8)
        self.local_pwd = _random_string(24)
        self.name = name
        self.selected: Address | None = None
        self.state = IceState.NEW
        self.last_consent = time.monotonic()
        self.on_datagram: Callable[[bytes], None] | None = None
        self.on_state_change: Callable[[IceState], None] | None = None
        self._mux = mux

    def set_state(self, state: IceState) -> None:
        if state is self.state:
            return
        logger.debug(
            "ice %s %s: %s -> %s", self.name, self.local_ufrag, self.state.value, state.value
        )
        self.state = state
        if self.on_state_change is not None:
            self.on_state_change(state)

    def handle_check(self, addr: Address, nominated: bool, now: float) -> None:
        """An authenticated binding request arrived from ``addr``.

        libwebrtc nominates with USE-CANDIDATE; before that, the first address that passes a
        check is used so DTLS can start at once.
        """
        self.last_consent = now
        if self.selected is None or (nominated and addr != self.selected):
            self._mux.route(self, addr)
            self.selected = addr
        if self.state is IceState.NEW:
            self.set_state(IceState.CONNECTED)

    def send(self, data: bytes) -> None:
        if self.selected is not None and self.state is IceState.CONNECTED:
            self._mux.sendto(data, self.selected)

    def close(self) -> None:
        self._mux.remove(self)
        self.set_state(IceState.CLOSED)


class UdpMux(asyncio.DatagramProtocol):
    """The node's UDP socket: STUN for known ufrags, everything else by source address."""

    def __init__(self) -> None:
        self._by_ufrag: dict[str, IceSession] = {}
        self._by_addr: dict[Address, IceSession] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._consent_task: asyncio.Task[None] | None = None

    # --- sessions --------------------------------------------------------------------------

    def create_session(self, name: str) -> IceSession:
        session = IceSession(self, name)
        self._by_ufrag[session.local_ufrag] = session
        return session

    def route(self, session: IceSession, addr: Address) -> None:
        if session.selected is not None and self._by_addr.get(session.selected) is session:
            del self._by_addr[session.selected]
        self._by_addr[addr] = session

    def remove(self, session: IceSession) -> None:
        self._by_ufrag.pop(session.local_ufrag, None)
        if session.selected is not None and self._by_addr.get(session.selected) is session:
            del self._by_addr[session.selected]

    @property
    def session_count(self) -> int:
        return len(self._by_ufrag)

    # --- socket ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport quacks like asyncio.DatagramTransport without subclassing it.
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._consent_task = asyncio.get_running_loop().create_task(
            self._expire_consent(), name="ice-consent"
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._consent_task is not None:
            self._consent_task.cancel()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (a client that went away) must not stop the socket.
        logger.debug("x udp error: %s", exc)

    def sendto(self, data: bytes, addr: Address) -> None:
        if self._transport is not None:
            self._transport.sendto(data, addr)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if not data:
            return
        if data[0] < 4:  # RFC 7983: 0-3 is STUN
            self._handle_stun(data, addr)
            return
        session = self._by_addr.get(addr)
        if session is not None and session.on_datagram is not None:
            session.on_datagram(data)

    def _handle_stun(self, data: bytes, addr: Address) -> None:
        try:
            message = stun.parse_message(data)
        except ValueError as exc:
            logger.debug("x bad STUN from %s: %s", addr, exc)
            return
        if message.message_method != stun.Method.BINDING:
            return
        if message.message_class != stun.Class.REQUEST:
            return  # ICE-lite sends no checks, so expects no responses
        username = message.attributes.get("USERNAME", "")
        session = self._by_ufrag.get(str(username).split(":", 1)[0])
        if session is None:
            return
        key = session.local_pwd.encode()
        if not message.check_message_integrity(key):
            logger.debug("x STUN integrity check failed from %s", addr)
            return
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=message.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = addr
        response.add_message_integrity(key)
        response.add_fingerprint()
        self.sendto(bytes(response), addr)
        session.handle_check(addr, "USE-CANDIDATE" in message.attributes, time.monotonic())

    async def _expire_consent(self) -> None:
        while True:
            await asyncio.sleep(CONSENT_CHECK_INTERVAL_S)
            self.expire_consent(time.monotonic())

    def expire_consent(self, now: float) -> None:
        """Fail the sessions whose client stopped checking (RFC 7675 consent freshness)."""
        for session in list(self._by_ufrag.values()):
            if (
                session.state is IceState.CONNECTED
                and now - session.last_consent > CONSENT_TIMEOUT_S
            ):
                logger.info("ice %s: consent expired", session.name)
                session.set_state(IceState.FAILED)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
