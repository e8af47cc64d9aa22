"""Negotiation on top of the adapter's PeerConnection: who offers, and one offer at a time."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from protocol.sdp_media import OutgoingTrack
from sfu.fanout import Sink
from sfu.rtc_adapter import ConnectionState, DataChannel
from sfu.tasks import TaskSet

logger = logging.getLogger(__name__)

#: An offer the client has not answered within this long has failed (LiveKit's
#: ``negotiationFailedTimeout``): the client is asked to reconnect rather than left wedged,
#: looking connected while no new track can reach it.
NEGOTIATION_TIMEOUT_S = 15.0


class RtcConnection(Protocol):
    """What a participant, its transports and its tracks use of a peer connection: the
    adapter's ``PeerConnection`` in the server, ``tests/fakes.py``'s in unit tests (no
    sockets, no certificates)."""

    name: str
    tcp_only: bool
    rtp_sink: Sink
    on_state_change: Callable[[ConnectionState], None] | None
    on_data_channel: Callable[[DataChannel], None] | None
    on_rtp: Callable[[bytes], None] | None
    on_rtcp: Callable[[bytes], None] | None

    def create_data_channel(self, label: str, *, reliable: bool) -> DataChannel: ...

    async def create_offer(self, tracks: Sequence[OutgoingTrack] = ()) -> str: ...

    async def set_answer(self, text: str) -> None: ...

    async def answer(
        self,
        offer_text: str,
        preferred: Mapping[str, Sequence[str]] | None = None,
        outgoing: Mapping[str, OutgoingTrack] | None = None,
    ) -> str: ...

    def restart_ice(self) -> None: ...

    async def add_candidate(self, init: dict[str, Any]) -> None: ...

    def local_candidates(self) -> list[dict[str, Any]]: ...

    def send_rtcp(self, packet: bytes) -> None: ...

    def forget_outgoing(self, *ssrcs: int) -> None: ...

    async def close(self) -> None: ...


class Deadline:
    """One negotiation timer: armed when we wait for the client, cancelled when it answers.

    :param expired: called when it runs out (not after ``cancel``).
    """

    def __init__(self, seconds: float, expired: Callable[[], None]) -> None:
        self._seconds = seconds
        self._expired = expired
        self._handle: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.cancel()
        self._handle = asyncio.get_running_loop().call_later(self._seconds, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._expired()


class NegotiationState(enum.Enum):
    """Offer/answer state of a server-offering (subscriber) transport."""

    IDLE = "idle"
    OFFER_SCHEDULED = "offer_scheduled"
    """An offer will be built on the next loop iteration: later changes join it."""
    OFFER_SENT = "offer_sent"
    CLOSED = "closed"


class SubscriberTransport:
    """The PeerConnection the server offers (LiveKit's subscriber PC).

    Negotiations are serialized: while an offer is outstanding, further requests are coalesced
    into one follow-up offer sent when the answer arrives (LiveKit ``transport.go``; libwebrtc
    rejects an offer in the have-local-offer state).

    :param send_offer: called with the SDP and the offer id to put on the wire.
    """

    def __init__(
        self,
        pc: RtcConnection,
        send_offer: Callable[[str, int], None],
        tasks: TaskSet,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.pc = pc
        self._send_offer = send_offer
        self._tasks = tasks
        self._log = log
        self.state = NegotiationState.IDLE
        self._renegotiate = False
        self._offer_id = 0
        self.reliable: DataChannel = pc.create_data_channel("_reliable", reliable=True)
        self.lossy: DataChannel = pc.create_data_channel("_lossy", reliable=False)
        self.on_answer: Callable[[str], None] | None = None
        """Told each applied answer (to learn which codecs the subscriber kept)."""
        self.on_negotiation_failed: Callable[[], None] | None = None
        """Told when an offer went unanswered for :data:`NEGOTIATION_TIMEOUT_S`."""
        self._deadline = Deadline(NEGOTIATION_TIMEOUT_S, self._negotiation_timed_out)
        self._last_offer = ""
        self.tracks: list[OutgoingTrack] = []
        """The track sections of our offers, in m= line order."""
        self._mids_given = 0
        self._stopped_in_offer: set[str] = set()
        """Mids offered stopped (port 0) in the outstanding offer."""
        self._recyclable: set[str] = set()
        """Mids whose stop the client has answered: their m= lines may carry new tracks."""

    def next_mid(self) -> str:
        """A mid never used before in this session (a recycled m= line gets a new one too,
        RFC 8829 5.2.2); mid 0 is the data channels' section (protocol/sdp_media.py)."""
        self._mids_given += 1
        return str(self._mids_given)

    def add_track(self, track: OutgoingTrack) -> None:
        """Offer ``track`` in the next offer: on the m= line of a stopped track of its kind
        whose stop was negotiated, else on a new line. Without recycling, a long meeting's
        SDP (and the memory behind it) would grow with every track anyone ever published."""
        for index, old in enumerate(self.tracks):
            if old.stopped and old.mid in self._recyclable and old.kind == track.kind:
                self._recyclable.discard(old.mid)
                self.tracks[index] = track
                return
        self.tracks.append(track)

    def stop_track(self, track: OutgoingTrack) -> None:
        """Unsubscribed: the line stays, with port 0, until a new track recycles it."""
        index = self.tracks.index(track)
        self.tracks[index] = dataclasses.replace(track, stopped=True)

    def _set_state(self, state: NegotiationState) -> None:
        self._log.debug("subscriber negotiation: %s -> %s", self.state.value, state.value)
        self.state = state

    def negotiate(self) -> None:
        """Ask for an offer now, or right after the outstanding one is answered."""
        match self.state:
            case NegotiationState.IDLE:
                # Building the offer in a task batches every change made in this loop
                # iteration (ten tracks published together cost one offer).
                self._set_state(NegotiationState.OFFER_SCHEDULED)
                self._tasks.spawn(self._offer(), name="subscriber-offer")
            case NegotiationState.OFFER_SENT:
                self._renegotiate = True
            case NegotiationState.OFFER_SCHEDULED | NegotiationState.CLOSED:
                return

    async def _offer(self) -> None:
        sdp = await self.pc.create_offer(list(self.tracks))
        if self.state is NegotiationState.CLOSED:
            return
        self._stopped_in_offer = {track.mid for track in self.tracks if track.stopped}
        self._set_state(NegotiationState.OFFER_SENT)
        self._offer_id += 1
        self._last_offer = sdp
        self._deadline.arm()
        self._send_offer(sdp, self._offer_id)

    def restart_ice(self) -> None:
        """An ICE-restart offer now, or with the next one when an offer is outstanding (LiveKit
        ``doICERestart``): the outstanding one is sent again first."""
        self.pc.restart_ice()
        if self.state is NegotiationState.OFFER_SENT:
            self.resend_outstanding()
            self._renegotiate = True
        else:
            self.negotiate()

    def resend_outstanding(self) -> None:
        """After a resume: an offer sent while the signal connection was away is sent again
        (LiveKit re-sends it), with a fresh deadline."""
        if self.state is NegotiationState.OFFER_SENT and self._last_offer:
            self._deadline.arm()
            self._send_offer(self._last_offer, self._offer_id)

    def _negotiation_timed_out(self) -> None:
        if self.state is not NegotiationState.OFFER_SENT:
            return
        self._log.warning(
            "subscriber negotiation failed: no answer in %.0f s", NEGOTIATION_TIMEOUT_S
        )
        if self.on_negotiation_failed is not None:
            self.on_negotiation_failed()

    async def handle_answer(self, sdp: str) -> None:
        if self.state is not NegotiationState.OFFER_SENT:
            raise ValueError(f"answer received in negotiation state {self.state.value}")
        await self.pc.set_answer(sdp)
        self._deadline.cancel()
        self._recyclable |= self._stopped_in_offer
        self._set_state(NegotiationState.IDLE)
        if self.on_answer is not None:
            self.on_answer(sdp)
        if self._renegotiate:
            self._renegotiate = False
            self.negotiate()

    def send_data(self, payload: bytes, *, reliable: bool) -> bool:
        return (self.reliable if reliable else self.lossy).send(payload)

    async def close(self) -> None:
        self._deadline.cancel()
        self._set_state(NegotiationState.CLOSED)
        await self.pc.close()


class PublisherTransport:
    """The PeerConnection the client offers (LiveKit's publisher PC); the server answers."""

    def __init__(self, pc: RtcConnection) -> None:
        self.pc = pc
        self._lock = asyncio.Lock()

    async def handle_offer(
        self,
        sdp: str,
        preferred: Mapping[str, Sequence[str]],
        outgoing: Mapping[str, OutgoingTrack] | None = None,
    ) -> str:
        async with self._lock:
            return await self.pc.answer(sdp, preferred, outgoing)

    async def close(self) -> None:
        await self.pc.close()
