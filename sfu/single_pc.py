"""Single peer connection mode (LiveKit ``/rtc/v1``): one PeerConnection carries publishing,
subscribing and data, and the client always offers.

The server cannot add an m= section to an offer it does not make, so a subscribed track is
sent on a receive-only section the client offered (livekit-client and the Rust SDK create
three audio and three video ones before their first offer). When there are not enough, the
server asks for more with ``media_sections_requirement`` and the client offers again (LiveKit
``transport.go`` ``sendUnmatchedMediaRequirement``; a requirement of zeros asks for a re-offer,
which is also how a removed track's section is renegotiated to ``inactive``).

:class:`SectionPlan` decides which section carries which track (sans-IO, no event loop);
:class:`SinglePcSubscriber` asks the client for offers and times them out.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from livekit.protocol import models

from protocol.sdp import SessionDescription
from protocol.sdp_media import MID_URI, Codec, offered_codecs, select_extensions
from sfu.receiver import PublishedTrack
from sfu.tasks import TaskSet
from sfu.transport import NEGOTIATION_TIMEOUT_S, Deadline

#: LiveKit debounces media-section requirements by 150 ms (``transport.go``): a burst of
#: subscriptions costs one re-offer.
REQUIREMENT_DEBOUNCE_S = 0.15
#: fmtp parameters that must agree for a client's codec entry to decode the publisher's stream
#: (H.264 profile and packetization mode, VP9 and AV1 profiles).
_DECODER_PARAMETERS = ("profile-level-id", "packetization-mode", "profile-id", "profile")


@dataclass(frozen=True)
class ReceiveSection:
    """A receive-only audio or video section of the client's offer."""

    mid: str
    kind: str
    codecs: tuple[Codec, ...]
    extensions: tuple[tuple[int, str], ...]
    """The offered header extensions we support, with the client's ids. All are answered, not
    only the mid we write: libwebrtc offers later sections of the kind with the extensions
    the last answer kept, and a simulcast section without the rid one fails to apply."""

    @property
    def mid_extension(self) -> int:
        """The client's header-extension id for ``sdes:mid`` (0 when it offered none)."""
        return next((ident for ident, uri in self.extensions if uri == MID_URI), 0)


def receive_sections(offer: SessionDescription) -> list[ReceiveSection]:
    """The sections the client offered to receive on, in offer order."""
    found = []
    for section in offer.media:
        if section.kind not in ("audio", "video") or section.rejected or section.mid is None:
            continue
        if not section.has("recvonly"):
            continue
        codecs = tuple(offered_codecs(section))
        extensions = tuple(select_extensions(section))
        found.append(ReceiveSection(section.mid, section.kind, codecs, extensions))
    return found


def matching_codecs(
    offered: Sequence[Codec], codec: Codec, red: Codec | None
) -> tuple[Codec, ...] | None:
    """The client's entries to send a publisher's ``codec`` (and its RED) with: the same codec
    and clock rate, preferring the entry whose decoder parameters agree; None when the client
    cannot decode it. Payload types are the client's (the fan-out rewrites them): Firefox
    plays silence on any other (LiveKit PR #4614)."""
    same = [
        c
        for c in offered
        if c.name.lower() == codec.name.lower() and c.clock_rate == codec.clock_rate
    ]
    if not same:
        return None
    wanted = _decoder_parameters(codec.fmtp)
    primary = max(same, key=lambda c: len(wanted & _decoder_parameters(c.fmtp)))
    if red is None:
        # The client's RTX for it: retransmissions and probe padding go there (RFC 4588).
        rtx = [c for c in offered if c.name.lower() == "rtx" and c.apt == primary.payload_type]
        return (primary, *rtx[:1])
    # RED's blocks carry the publisher's payload type inside (RFC 2198): it passes through
    # unchanged only when the client numbers the primary codec the same way.
    client_red = next(
        (
            c
            for c in offered
            if c.name.lower() == "red" and c.fmtp.startswith(f"{primary.payload_type}/")
        ),
        None,
    )
    if client_red is not None and primary.payload_type == codec.payload_type:
        return (client_red, primary)
    return (primary,)


def _decoder_parameters(fmtp: str) -> set[str]:
    parts = {part.strip() for part in fmtp.split(";")}
    return {part for part in parts if part.partition("=")[0] in _DECODER_PARAMETERS}


def track_kind(track: PublishedTrack) -> str:
    return "audio" if track.info.type == models.TrackType.AUDIO else "video"


@dataclass(frozen=True)
class Placement:
    """A subscribed track and the participant that publishes it."""

    publisher_sid: str
    track: PublishedTrack


@dataclass(frozen=True)
class Placed:
    """A track given a section of the client's offer, with the client's codecs for it."""

    section: ReceiveSection
    placement: Placement
    codecs: tuple[Codec, ...]


class SectionPlan:
    """Which receive-only section of the client's offers carries which subscribed track.

    A section freed by an unsubscription is answered ``inactive`` once before it carries
    another track: a browser fires no new ``track`` event for a section that goes on
    receiving under another msid.
    """

    def __init__(self) -> None:
        self.waiting: dict[str, Placement] = {}
        """Track sid -> a subscription that has no section yet, in subscription order."""
        self.assigned: dict[str, Placement] = {}
        """Mid -> the subscription its section carries."""
        self._sections: dict[str, ReceiveSection] = {}
        self._cooling: set[str] = set()

    def want(self, placement: Placement) -> None:
        self.waiting[placement.track.sid] = placement

    def forget(self, track_sid: str) -> bool:
        """Drop a subscription still waiting for a section; True when it was one."""
        return self.waiting.pop(track_sid, None) is not None

    def release(self, mid: str) -> None:
        """The track on ``mid`` was unsubscribed: the section rests for one answer."""
        if self.assigned.pop(mid, None) is not None:
            self._cooling.add(mid)

    def apply_offer(
        self, offer: SessionDescription
    ) -> tuple[list[Placement], list[Placed], list[Placement]]:
        """Place waiting subscriptions on the offer's free sections. Returns (subscriptions
        whose section the offer no longer has, now waiting again; new placements; those the
        client cannot decode, dropped)."""
        sections = {section.mid: section for section in receive_sections(offer)}
        self._sections = sections
        lost = [p for mid, p in self.assigned.items() if mid not in sections]
        for mid in [mid for mid in self.assigned if mid not in sections]:
            del self.assigned[mid]
        for placement in lost:
            self.want(placement)
        free = [s for mid, s in sections.items() if mid not in self.assigned.keys() | self._cooling]
        placed: list[Placed] = []
        refused: list[Placement] = []
        for sid, placement in list(self.waiting.items()):
            kind = track_kind(placement.track)
            candidates = [s for s in free if s.kind == kind]
            receiver = placement.track.receiver
            if not candidates or receiver is None:
                continue
            for section in candidates:
                codecs = matching_codecs(section.codecs, receiver.codec, receiver.red)
                if codecs is not None:
                    free.remove(section)
                    del self.waiting[sid]
                    self.assigned[section.mid] = placement
                    placed.append(Placed(section, placement, codecs))
                    break
            else:
                # A section of the right kind that lacks the codec: more sections would not
                # help, the client cannot decode this track.
                del self.waiting[sid]
                refused.append(placement)
        return lost, placed, refused

    def answered(self) -> None:
        """Our answer went out: sections answered ``inactive`` may carry tracks again."""
        self._cooling.clear()

    def sections_needed(self) -> tuple[int, int]:
        """(audio, video) sections to ask the client for: waiting tracks beyond the free
        sections of the last offer."""
        taken = self.assigned.keys() | self._cooling
        needed = {"audio": 0, "video": 0}
        for placement in self.waiting.values():
            needed[track_kind(placement.track)] += 1
        for mid, section in self._sections.items():
            if mid not in taken and section.kind in needed:
                needed[section.kind] -= 1
        return max(0, needed["audio"]), max(0, needed["video"])


class RequirementState(enum.Enum):
    """Where a single-PC participant's renegotiation stands (the server never offers)."""

    IDLE = "idle"
    SCHEDULED = "scheduled"
    """A requirement goes out after the debounce; later needs join it."""
    REQUESTED = "requested"
    """A requirement is out; the client's offer is awaited (with a deadline)."""
    ANSWERING = "answering"
    """An offer of the client's is being answered."""
    CLOSED = "closed"


class SinglePcSubscriber:
    """The subscribing side of a single peer connection: the client offers, so renegotiating
    means asking it to (``media_sections_requirement``).

    :param send_requirement: puts a requirement of (audio, video) sections on the wire.
    :param sections_needed: how many the client must add for the waiting tracks.
    """

    def __init__(
        self,
        send_requirement: Callable[[int, int], None],
        sections_needed: Callable[[], tuple[int, int]],
        tasks: TaskSet,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self._send_requirement = send_requirement
        self._sections_needed = sections_needed
        self._tasks = tasks
        self._log = log
        self.state = RequirementState.IDLE
        self._again = False
        self._last: tuple[int, int] = (0, 0)
        self._deadline = Deadline(NEGOTIATION_TIMEOUT_S, self._timed_out)
        self.on_negotiation_failed: Callable[[], None] | None = None
        """Told when a requirement went without an offer for ``NEGOTIATION_TIMEOUT_S``."""

    def _set_state(self, state: RequirementState) -> None:
        self._log.debug("single-pc negotiation: %s -> %s", self.state.value, state.value)
        self.state = state

    def negotiate(self) -> None:
        """Ask the client to offer again, after the debounce or after the offer in hand."""
        match self.state:
            case RequirementState.IDLE:
                self._set_state(RequirementState.SCHEDULED)
                self._tasks.spawn(self._request_soon(), name="media-sections-requirement")
            case RequirementState.ANSWERING | RequirementState.REQUESTED:
                # The offer in hand, or the one asked for, is answered first; then again.
                self._again = True
            case RequirementState.SCHEDULED | RequirementState.CLOSED:
                return

    async def _request_soon(self) -> None:
        await asyncio.sleep(REQUIREMENT_DEBOUNCE_S)
        if self.state is not RequirementState.SCHEDULED:
            return
        self._last = self._sections_needed()
        self._set_state(RequirementState.REQUESTED)
        self._deadline.arm()
        self._send_requirement(*self._last)

    def offer_received(self) -> None:
        self._deadline.cancel()
        if self.state is not RequirementState.CLOSED:
            self._set_state(RequirementState.ANSWERING)

    def offer_refused(self) -> None:
        """The client's offer could not be answered: back to waiting for the next one."""
        if self.state is RequirementState.ANSWERING:
            self._set_state(RequirementState.IDLE)

    def offer_answered(self) -> None:
        """Our answer is out: ask again when tracks still wait, or a change came meanwhile
        (LiveKit sends the requirement after each answer that leaves sections unmatched)."""
        if self.state is RequirementState.CLOSED:
            return
        self._set_state(RequirementState.IDLE)
        again, self._again = self._again, False
        if again or self._sections_needed() != (0, 0):
            self.negotiate()

    def resend_outstanding(self) -> None:
        """After a resume: a requirement sent while the signal connection was away again."""
        if self.state is RequirementState.REQUESTED:
            self._deadline.arm()
            self._send_requirement(*self._last)

    def restart_ice(self) -> None:
        """After a resume (``Room.resume``): the client restarts ICE with its own offer, as the
        offerer; a requirement it may have missed while away is sent again."""
        self.resend_outstanding()

    def _timed_out(self) -> None:
        if self.state is not RequirementState.REQUESTED:
            return
        self._log.warning("negotiation failed: no offer %.0f s after asking", NEGOTIATION_TIMEOUT_S)
        if self.on_negotiation_failed is not None:
            self.on_negotiation_failed()

    async def handle_answer(self, sdp: str) -> None:
        """LiveKit logs and ignores a client's answer here: the server never offers."""
        raise ValueError("answer on a single peer connection, where the server never offers")

    async def close(self) -> None:
        self._deadline.cancel()
        self._set_state(RequirementState.CLOSED)
