"""The client's ICE agent (RFC 8445), full ICE on one UDP socket, sans-IO.

Against an ICE-lite server (``a=ice-lite``, ours and LiveKit with ``rtc.use_ice_lite``) the
client is always controlling and nominates aggressively: every check carries USE-CANDIDATE,
and the first address that answers becomes the selected pair. Against a full-ICE server
(LiveKit's default) the offerer controls: the client controls its publisher transport and is
controlled on the subscriber transport, where the server's nominating check selects the pair.
Either way the client answers the server's checks (RFC 8445 7.3), resolves role conflicts
(7.3.1.1) and keeps sending checks on the selected pair for consent (RFC 7675).
"""

from __future__ import annotations

import enum
import logging
import secrets

from aioice import stun

from sfu.ice import binding_success, random_string

logger = logging.getLogger(__name__)

Address = tuple[str, int]
Datagram = tuple[bytes, Address]

CHECK_INTERVAL_S = 0.2
KEEPALIVE_INTERVAL_S = 2.5
CONNECT_TIMEOUT_S = 15.0
#: Peer-reflexive priority our checks announce (RFC 8445 7.1.1, type preference 110).
_PRFLX_PRIORITY = (110 << 24) | (65535 << 8) | 255
_MAX_PENDING = 64


class IceState(enum.Enum):
    NEW = "new"
    CHECKING = "checking"
    CONNECTED = "connected"
    FAILED = "failed"


class IceAgent:
    """Connectivity checks to the server's candidates, answers to its checks.

    :param controlling: our role unless the remote is ICE-lite (then always controlling).
    """

    def __init__(self, *, controlling: bool, now: float) -> None:
        self.local_ufrag = random_string(8)
        self.local_pwd = random_string(24)
        self.controlling = controlling
        self.tie_breaker = secrets.randbits(64)
        self.remote_ufrag = ""
        self.remote_pwd = ""
        self.candidates: list[Address] = []
        self.selected: Address | None = None
        self.state = IceState.NEW
        self._pending: dict[bytes, Address] = {}
        self._started = now
        self._last_check = float("-inf")
        self._nominated: set[Address] = set()

    def set_remote(self, ufrag: str, pwd: str, *, lite: bool) -> None:
        if (ufrag, pwd) != (self.remote_ufrag, self.remote_pwd) and self.remote_ufrag:
            self.selected = None  # an ICE restart
            self.state = IceState.NEW
        self.remote_ufrag, self.remote_pwd = ufrag, pwd
        if lite:
            self.controlling = True

    def add_candidate(self, address: Address) -> None:
        if address not in self.candidates:
            self.candidates.append(address)
            self._last_check = float("-inf")  # check it at the next poll

    def poll(self, now: float) -> list[Datagram]:
        """Checks to send now: to every candidate while connecting, every
        :data:`CHECK_INTERVAL_S`; on the selected pair every :data:`KEEPALIVE_INTERVAL_S`."""
        if self.state is IceState.FAILED or not self.remote_ufrag:
            return []
        if self.selected is not None:
            if now - self._last_check < KEEPALIVE_INTERVAL_S:
                return []
            self._last_check = now
            return [(self._request(self.selected), self.selected)]
        if now - self._started > CONNECT_TIMEOUT_S:
            self._set_state(IceState.FAILED)
            return []
        if now - self._last_check < CHECK_INTERVAL_S or not self.candidates:
            return []
        self._last_check = now
        self._set_state(IceState.CHECKING)
        return [(self._request(address), address) for address in self.candidates]

    def _set_state(self, state: IceState) -> None:
        if state is not self.state:
            logger.debug("ice %s: %s -> %s", self.local_ufrag, self.state.value, state.value)
            self.state = state

    def _request(self, address: Address) -> bytes:
        message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        message.attributes["USERNAME"] = f"{self.remote_ufrag}:{self.local_ufrag}"
        message.attributes["PRIORITY"] = _PRFLX_PRIORITY
        if self.controlling:
            message.attributes["ICE-CONTROLLING"] = self.tie_breaker
            message.attributes["USE-CANDIDATE"] = None
        else:
            message.attributes["ICE-CONTROLLED"] = self.tie_breaker
        message.add_message_integrity(self.remote_pwd.encode())
        message.add_fingerprint()
        if len(self._pending) >= _MAX_PENDING:
            del self._pending[next(iter(self._pending))]
        self._pending[message.transaction_id] = address
        return bytes(message)

    def handle(self, data: bytes, address: Address) -> list[Datagram]:
        """A STUN datagram from ``address``: the replies to send (never raises)."""
        try:
            message = stun.parse_message(data)
        except ValueError as exc:
            logger.debug("x bad STUN from %s: %s", address, exc)
            return []
        if message.message_method != stun.Method.BINDING:
            return []
        if message.message_class == stun.Class.REQUEST:
            return self._on_request(message, address)
        if message.message_class == stun.Class.RESPONSE:
            self._on_success(message, address)
        elif message.message_class == stun.Class.ERROR:
            self._on_error(message)
        return []

    def _on_request(self, message: stun.Message, address: Address) -> list[Datagram]:
        username = str(message.attributes.get("USERNAME", ""))
        key = self.local_pwd.encode()
        if username.split(":", 1)[0] != self.local_ufrag:
            return []
        if not message.check_message_integrity(key):
            logger.debug("x STUN request from %s fails integrity", address)
            return []
        conflict = self._role_conflict(message)
        if conflict is not None:
            return [(conflict, address)]
        if "USE-CANDIDATE" in message.attributes and not self.controlling:
            self._nominated.add(address)
            self._select(address)
        replies = [(binding_success(message, address, key), address)]
        if self.selected is None and address not in self.candidates:
            # A peer-reflexive candidate (RFC 8445 7.3.1.3): check it back at once.
            self.candidates.append(address)
            replies.append((self._request(address), address))
        return replies

    def _role_conflict(self, message: stun.Message) -> bytes | None:
        """RFC 8445 7.3.1.1: the larger tie-breaker controls; the other side switches, or
        is told to with a 487 error."""
        theirs = message.attributes.get("ICE-CONTROLLING" if self.controlling else "ICE-CONTROLLED")
        if not isinstance(theirs, int):
            return None
        keep = self.tie_breaker >= theirs
        if self.controlling != keep:  # controlled with the larger one, or the reverse
            self.controlling = not self.controlling
            return None
        error = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.ERROR,
            transaction_id=message.transaction_id,
        )
        error.attributes["ERROR-CODE"] = (487, "Role Conflict")
        error.add_message_integrity(self.local_pwd.encode())
        error.add_fingerprint()
        return bytes(error)

    def _on_success(self, message: stun.Message, address: Address) -> None:
        sent_to = self._pending.pop(message.transaction_id, None)
        if sent_to is None or not message.check_message_integrity(self.remote_pwd.encode()):
            return
        if self.controlling or address in self._nominated:
            self._select(address)

    def _on_error(self, message: stun.Message) -> None:
        if self._pending.pop(message.transaction_id, None) is None:
            return
        code = message.attributes.get("ERROR-CODE")
        if isinstance(code, tuple) and code[0] == 487:
            self.controlling = not self.controlling
            self._last_check = float("-inf")

    def _select(self, address: Address) -> None:
        if self.selected is None:
            self.selected = address
            self._set_state(IceState.CONNECTED)
