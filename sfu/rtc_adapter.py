"""The only module that touches aiortc and aioice.

Everything above this module sees :class:`PeerConnection` and :class:`DataChannel`, which speak
SDP strings, candidate dictionaries and bytes. The media issue replaces what sits under these two
classes with our own ICE-lite transport (see ``shared/reference/transport.md``); the rest of the
server must not notice.

Private or module-level aiortc/aioice details used here (pinned in pyproject, checked by
``tests/unit/test_rtc_adapter.py``):

- ``aioice.ice.get_host_addresses``: replaced so host candidates advertise ``rtc.node_ip``.
  aioice skips 127.0.0.1, which is exactly the address the SDK tests advertise inside their
  network namespace.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import aioice.ice
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidAccessError, InvalidStateError
from aiortc.sdp import candidate_from_sdp

logger = logging.getLogger(__name__)

#: Reliable messages kept for a channel that is not open yet; beyond this the peer is too slow.
MAX_PENDING_MESSAGES = 1024

# What aiortc raises for descriptions it cannot apply; the layers above see ValueError.
_AIORTC_ERRORS = (ValueError, IndexError, KeyError, InvalidAccessError, InvalidStateError)

_default_host_addresses = aioice.ice.get_host_addresses


def configure_host_addresses(addresses: Sequence[str], *, add_loopback: bool = False) -> None:
    """Make every later ICE gathering advertise exactly ``addresses`` (``rtc.node_ip``).

    An empty sequence restores aioice's own interface discovery, which never offers 127.0.0.1;
    ``add_loopback`` adds it (LiveKit's ``rtc.enable_loopback_candidate``, on in dev mode).
    """
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if chosen:
            found = chosen
        else:
            found = _default_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
            if add_loopback and "127.0.0.1" not in found:
                found = [*found, "127.0.0.1"]
        return [a for a in found if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


class ConnectionState(enum.Enum):
    """What the layers above need to know about a peer connection."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


_STATE_FROM_AIORTC = {
    "new": ConnectionState.NEW,
    "connecting": ConnectionState.CONNECTING,
    "connected": ConnectionState.CONNECTED,
    "failed": ConnectionState.FAILED,
    "closed": ConnectionState.CLOSED,
}


class DataChannel:
    """A data channel that queues reliable messages until it opens.

    A participant may be sent reliable data the moment its ``connect()`` returns, before SCTP
    has opened the channel on our side; reliable means not lost, so those wait here.
    Unreliable (lossy) messages sent before the channel opens are dropped, as a lossy channel
    would drop them anyway.
    """

    def __init__(self, channel: RTCDataChannel, *, reliable: bool) -> None:
        self.label: str = channel.label
        self.reliable = reliable
        self._channel = channel
        self._pending: deque[bytes] = deque()
        self.on_message: Callable[[bytes], None] | None = None
        channel.on("open", self._flush)
        channel.on("message", self._on_message)

    @property
    def is_open(self) -> bool:
        return bool(self._channel.readyState == "open")

    def send(self, payload: bytes) -> bool:
        """Send or queue ``payload``; returns False when it was dropped."""
        if self.is_open and not self._pending:
            self._channel.send(payload)
            return True
        if not self.reliable or self._channel.readyState in ("closing", "closed"):
            return False
        if len(self._pending) >= MAX_PENDING_MESSAGES:
            logger.warning("data channel %s: pending queue full, dropping", self.label)
            return False
        self._pending.append(payload)
        return True

    def _flush(self) -> None:
        while self._pending and self.is_open:
            self._channel.send(self._pending.popleft())

    def _on_message(self, message: bytes | str) -> None:
        if self.on_message is None:
            return
        self.on_message(message.encode() if isinstance(message, str) else message)


class PeerConnection:
    """One WebRTC peer connection used for ICE, DTLS and SCTP data channels.

    :param name: ``publisher`` or ``subscriber``, for logs.
    :param ice_servers: STUN/TURN URLs for our own gathering; empty means host candidates only
        (aiortc would otherwise add a public STUN server).
    """

    def __init__(self, name: str, ice_servers: Sequence[str] = ()) -> None:
        self.name = name
        servers = [RTCIceServer(urls=list(ice_servers))] if ice_servers else []
        config = RTCConfiguration(iceServers=servers)
        self._pc = RTCPeerConnection(configuration=config)
        self._remote_set = False
        self._early_candidates: list[dict[str, Any]] = []
        self.state = ConnectionState.NEW
        self.on_state_change: Callable[[ConnectionState], None] | None = None
        self.on_data_channel: Callable[[DataChannel], None] | None = None
        self._pc.on("connectionstatechange", self._on_connection_state)
        self._pc.on("datachannel", self._on_remote_channel)

    def create_data_channel(self, label: str, *, reliable: bool) -> DataChannel:
        """Create a channel the way LiveKit does: ``_reliable`` ordered, ``_lossy`` unordered
        with no retransmissions."""
        if reliable:
            channel = self._pc.createDataChannel(label, ordered=True)
        else:
            channel = self._pc.createDataChannel(label, ordered=False, maxRetransmits=0)
        return DataChannel(channel, reliable=reliable)

    async def create_offer(self) -> str:
        offer = await self._pc.createOffer()
        await self._pc.setLocalDescription(offer)
        return str(self._pc.localDescription.sdp)

    async def set_answer(self, sdp: str) -> None:
        """Apply the remote answer; ValueError when it does not fit our offer."""
        await self._set_remote(RTCSessionDescription(sdp=sdp, type="answer"))

    async def answer(self, offer_sdp: str) -> str:
        """Answer a remote offer; ValueError when it cannot be applied."""
        await self._set_remote(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        try:
            answer = await self._pc.createAnswer()
            await self._pc.setLocalDescription(answer)
        except _AIORTC_ERRORS as exc:
            raise ValueError(f"cannot answer offer: {exc}") from exc
        return str(self._pc.localDescription.sdp)

    async def _set_remote(self, description: RTCSessionDescription) -> None:
        try:
            await self._pc.setRemoteDescription(description)
        except _AIORTC_ERRORS as exc:
            raise ValueError(f"invalid remote {description.type}: {exc}") from exc
        await self._remote_description_applied()

    async def add_candidate(self, init: dict[str, Any]) -> None:
        """Apply a trickled RTCIceCandidateInit; an empty candidate means end of candidates.

        Candidates that arrive before the remote description are kept until it is applied.
        Raises ValueError for a candidate we cannot parse.
        """
        if not self._remote_set:
            self._early_candidates.append(init)
            return
        text = init.get("candidate") or ""
        if not isinstance(text, str):
            raise ValueError("candidate is not a string")
        if not text:
            # libwebrtc trickles an empty candidate per m-line to signal end-of-candidates, but
            # aioice would then fail ICE while later (TCP) candidates may still come; ignore it.
            return
        if text.startswith("candidate:"):
            text = text[len("candidate:") :]
        try:
            candidate = candidate_from_sdp(text)
        except (ValueError, IndexError, AssertionError) as exc:
            raise ValueError(f"unparseable candidate {text!r}") from exc
        if candidate.protocol.lower() != "udp":
            return  # aioice only speaks UDP; TCP candidates arrive with the ICE-TCP issue.
        candidate.sdpMid = init.get("sdpMid")
        index = init.get("sdpMLineIndex")
        candidate.sdpMLineIndex = index if isinstance(index, int) else None
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0
        await self._pc.addIceCandidate(candidate)

    def local_candidates(self) -> list[dict[str, Any]]:
        """Our candidates as RTCIceCandidateInit dictionaries, to trickle to the client.

        Only the first m-section's: every section is BUNDLEd onto its transport. All three keys
        are always present; the Rust SDK unwraps them.
        """
        description = self._pc.localDescription
        if description is None:
            return []
        mid: str | None = None
        sections = -1
        found: list[dict[str, Any]] = []
        for line in str(description.sdp).splitlines():
            if line.startswith("m="):
                sections += 1
            elif line.startswith("a=mid:") and sections == 0:
                mid = line[len("a=mid:") :]
            elif line.startswith("a=candidate:") and sections == 0:
                found.append({"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": 0})
        for candidate in found:
            candidate["sdpMid"] = mid
        return found

    async def close(self) -> None:
        await self._pc.close()

    async def _remote_description_applied(self) -> None:
        if self._remote_set:
            return
        self._remote_set = True
        early, self._early_candidates = self._early_candidates, []
        for init in early:
            try:
                await self.add_candidate(init)
            except ValueError as exc:
                logger.debug("x %s: dropped early candidate: %s", self.name, exc)

    def _on_connection_state(self) -> None:
        state = _STATE_FROM_AIORTC.get(self._pc.connectionState)
        if state is None or state == self.state:
            return
        logger.debug("%s pc: %s -> %s", self.name, self.state.value, state.value)
        self.state = state
        if self.on_state_change is not None:
            self.on_state_change(state)

    def _on_remote_channel(self, channel: RTCDataChannel) -> None:
        # LiveKit's clients open `_reliable` ordered and `_lossy`/`_data_track` unordered.
        wrapped = DataChannel(channel, reliable=bool(channel.ordered))
        if self.on_data_channel is not None:
            self.on_data_channel(wrapped)
