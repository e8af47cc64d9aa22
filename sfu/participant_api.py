"""What a participant is given and what it tells: who joins and how (:class:`JoinParams`),
where its signal responses go, what its room hears from it, and who may have a track."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from livekit.protocol import models, rtc

from protocol.token import VideoGrant
from sfu.receiver import PublishedTrack

if TYPE_CHECKING:
    from sfu.participant import Participant


class SignalSink(Protocol):
    """Where a participant's signal responses go (the WebSocket session, or a relay)."""

    def send(self, response: rtc.SignalResponse) -> None:
        """Queue ``response``; never blocks."""

    def close(self) -> None:
        """Close the signal connection once queued responses are written."""


class DetachedSink:
    """Where responses go while a participant's signal connection is away: nowhere. A resume
    sends the full state again (``Room.resume``)."""

    def send(self, response: rtc.SignalResponse) -> None:
        return None

    def close(self) -> None:
        return None


class ParticipantListener(Protocol):
    """What a participant tells its room."""

    def on_participant_active(self, participant: Participant) -> None: ...

    def on_participant_failed(
        self,
        participant: Participant,
        reason: models.DisconnectReason = models.DisconnectReason.CONNECTION_TIMEOUT,
        *,
        reconnect: bool = False,
        send_leave: bool = True,
    ) -> None: ...

    def on_track_published(self, participant: Participant, track: PublishedTrack) -> None: ...

    def on_track_unpublished(self, participant: Participant, track: PublishedTrack) -> None: ...

    def on_participant_changed(self, participant: Participant) -> None: ...

    def on_participant_data(
        self, participant: Participant, packet: models.DataPacket, *, reliable: bool
    ) -> None: ...


class TrackOwner(Protocol):
    """Who a subscribed track belongs to, as the subscriber's room knows it: a participant, or
    its copy in a room it is forwarded to (``sfu/forwarding.py``)."""

    sid: str

    def allows(self, subscriber: Participant, track_sid: str) -> bool: ...


def permission_allows(
    permission: rtc.SubscriptionPermission | None, subscriber: Participant, track_sid: str
) -> bool:
    """Whether a publisher's SubscriptionPermission lets ``subscriber`` have the track
    (LiveKit: everyone unless restricted; recorders are exempt)."""
    if permission is None or permission.all_participants or subscriber.grant.recorder:
        return True
    for entry in permission.track_permissions:
        if subscriber.sid == entry.participant_sid or (
            entry.participant_identity and entry.participant_identity == subscriber.identity
        ):
            return entry.all_tracks or track_sid in entry.track_sids
    return False


def is_dependent(kind: models.ParticipantInfo.Kind, agent: bool, recorder: bool) -> bool:
    """An agent or egress (by kind, or the legacy ``agent``/``recorder`` grants): it neither
    counts against ``max_participants``, starts agent jobs nor keeps its room open (LiveKit
    ``IsDependent``)."""
    kinds = (models.ParticipantInfo.Kind.AGENT, models.ParticipantInfo.Kind.EGRESS)
    return kind in kinds or agent or recorder


@dataclass(frozen=True)
class JoinParams:
    """Who is joining and how, from the token and the ``/rtc`` query."""

    identity: str
    grant: VideoGrant
    name: str = ""
    metadata: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    kind: models.ParticipantInfo.Kind = models.ParticipantInfo.Kind.STANDARD
    protocol: int = 0
    auto_subscribe: bool = True
    adaptive_stream: bool = False
    client_info: models.ClientInfo = field(default_factory=models.ClientInfo)
    single_pc: bool = False
    """One peer connection both ways, the client always offering (``/rtc/v1``)."""
    ice_preference: str = ""
    """"tcp" or "tls" after the client asked for it (``switch_candidate_protocol``): only
    ICE-TCP candidates are offered (TLS goes through the TURN servers the client is given)."""
