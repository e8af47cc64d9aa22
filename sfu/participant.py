"""A participant: its identity and grants, its two peer connections and its signal sink."""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from protocol.sdp import parse as sdp_parse
from protocol.sdp_media import OutgoingTrack
from sfu.downtrack import DownTrack
from sfu.endpoint import Endpoint
from sfu.participant_api import (
    DetachedSink,
    JoinParams,
    ParticipantListener,
    SignalSink,
    TrackOwner,
    is_dependent,
    permission_allows,
)
from sfu.receiver import PublishedTrack
from sfu.rtc_adapter import MAX_PENDING_MESSAGES, ConnectionState, DataChannel, PeerConnection
from sfu.single_pc import SinglePcSubscriber
from sfu.tasks import TaskSet
from sfu.track_info import SOURCES_BY_NAME, PublishError, source_name
from sfu.tracks import ParticipantTracks
from sfu.transport import PublisherTransport, RtcConnection, SubscriberTransport

if TYPE_CHECKING:
    from sfu.room import Room

logger = logging.getLogger(__name__)

#: Below DEBUG: whole SDPs (about 1,000 lines for two participants in 2 s), off by default even
#: in --dev; ``logging.level: trace`` turns them on.
TRACE = 5
_RELIABLE_LABEL = "_reliable"
_LOSSY_LABEL = "_lossy"
#: How often probe padding goes out while the allocator probes.
PROBE_PADDING_INTERVAL_S = 0.02


class ParticipantState(enum.Enum):
    """LiveKit's participant states (``ParticipantInfo.State``)."""

    JOINING = models.ParticipantInfo.State.JOINING
    JOINED = models.ParticipantInfo.State.JOINED
    ACTIVE = models.ParticipantInfo.State.ACTIVE
    DISCONNECTED = models.ParticipantInfo.State.DISCONNECTED


class Participant:
    """One connected participant (LiveKit ``ParticipantImpl``).

    :param listener: the room, told about activation and received data.
    :param endpoint: the WebRTC sockets both peer connections use; released at close.
    :param connect: makes a peer connection by name (default: the adapter's, on ``endpoint``).
    """

    def __init__(
        self,
        *,
        sid: str,
        params: JoinParams,
        room_name: str,
        sink: SignalSink,
        listener: ParticipantListener,
        endpoint: Endpoint,
        connect: Callable[[str], RtcConnection] | None = None,
    ) -> None:
        self.sid = sid
        self.identity = params.identity
        self.params = params
        self.grant = params.grant
        self.name = params.name
        self.metadata = params.metadata
        self.attributes: dict[str, str] = dict(params.attributes)
        self.joined_at_ms = int(time.time() * 1000)
        self.version = 0
        self.state = ParticipantState.JOINING
        self.disconnect_reason: models.DisconnectReason = models.DisconnectReason.UNKNOWN_REASON
        self.sink = sink
        self.signal_lost_at: float | None = None
        """Monotonic time the signal connection went away, while it is away."""
        self._listener = listener
        self.log = logging.LoggerAdapter(
            logger, {"room": room_name, "participant": self.identity, "pID": sid}
        )
        self.tasks = TaskSet(self.log)
        # Protocol >= 3 with subscribe permission makes the subscriber PC primary (LiveKit
        # `room.go createJoinResponseLocked`); the client then waits for it to connect. A
        # single peer connection is the publisher's (LiveKit ``setupTransportManager``).
        self.subscriber_primary = (
            params.protocol > 2 and self.grant.can_subscribe and not params.single_pc
        )
        # The peer connections, by name; tests hand in fakes (tests/fakes.py).
        connect = connect or partial(PeerConnection, endpoint=endpoint)
        self.publisher = PublisherTransport(connect("pc" if params.single_pc else "publisher"))
        self.subscriber: SubscriberTransport | SinglePcSubscriber
        if params.single_pc:
            self.tracks = ParticipantTracks(self.publisher.pc, None)
            self.subscriber = SinglePcSubscriber(
                self._send_requirement, self.tracks.sections_needed, self.tasks, self.log
            )
        else:
            self.subscriber = SubscriberTransport(
                connect("subscriber"), self._send_offer, self.tasks, self.log
            )
            self.subscriber.pc.on_state_change = self._on_subscriber_state
            self.tracks = ParticipantTracks(self.publisher.pc, self.subscriber)
        self.tracks.on_refused = self._subscription_refused
        self.tracks.owner_sid = sid
        self.tracks.on_stream_state = self._send_stream_state
        self.tracks.on_probing = self._start_probing
        self._probing = False
        self.tracks.adaptive_stream = params.adaptive_stream
        if params.ice_preference:
            self.publisher.pc.tcp_only = True
            if isinstance(self.subscriber, SubscriberTransport):
                self.subscriber.pc.tcp_only = True
        self._endpoint = endpoint
        self._publisher_channels: dict[str, DataChannel] = {}
        self._data_before_channel: deque[bytes] = deque()
        self._last_reliable_seq = 0
        self.subscriber.on_negotiation_failed = self._on_negotiation_failed
        self.publisher.pc.on_state_change = self._on_publisher_state
        self.publisher.pc.on_data_channel = self._on_publisher_channel
        self.subscription_permission: rtc.SubscriptionPermission | None = None
        """Who may subscribe to this participant's tracks; None allows everyone."""
        self.on_moved: Callable[[str, Room | None], str] | None = None
        """Set by the signal session: told the name of the room the server API moves this
        participant to (and the room, when it is on this node), it answers a token for that
        room (MoveParticipant)."""

    @property
    def hidden(self) -> bool:
        return self.grant.hidden

    @property
    def dependent(self) -> bool:
        return is_dependent(self.params.kind, self.grant.agent, self.grant.recorder)

    @property
    def is_closed(self) -> bool:
        return self.state is ParticipantState.DISCONNECTED

    def set_state(self, state: ParticipantState) -> None:
        """The one place a participant changes state; every change bumps the info version."""
        if state is self.state or self.is_closed:
            return
        self.log.debug("participant state: %s -> %s", self.state.name, state.name)
        self.state = state
        self.version += 1

    def to_info(self) -> models.ParticipantInfo:
        grant = self.grant
        info = models.ParticipantInfo(
            sid=self.sid,
            identity=self.identity,
            state=self.state.value,
            metadata=self.metadata,
            joined_at=self.joined_at_ms // 1000,
            joined_at_ms=self.joined_at_ms,
            name=self.name,
            version=self.version,
            kind=self.params.kind,
            attributes=self.attributes,
            disconnect_reason=self.disconnect_reason,
            client_protocol=self.params.protocol,
            tracks=[track.info for track in self.tracks.published.values()],
            is_publisher=bool(self.tracks.published),
            permission=models.ParticipantPermission(
                can_subscribe=grant.can_subscribe,
                can_publish=grant.can_publish,
                can_publish_data=grant.can_publish_data,
                can_publish_sources=[
                    SOURCES_BY_NAME.get(s.lower(), models.TrackSource.UNKNOWN)
                    for s in grant.can_publish_sources
                ],
                hidden=grant.hidden,
                recorder=grant.recorder,
                can_update_metadata=grant.can_update_own_metadata,
                agent=grant.agent,
                can_subscribe_metrics=grant.can_subscribe_metrics,
                can_manage_agent_session=grant.can_manage_agent_session,
            ),
        )
        return info

    def send(self, response: rtc.SignalResponse) -> None:
        if not self.is_closed:
            self.sink.send(response)

    def rebind(self, listener: ParticipantListener, room_name: str) -> None:
        """The participant now belongs to another room on this node (MoveParticipant)."""
        self._listener = listener
        extra = self.log.extra
        if isinstance(extra, dict):  # shared by the objects that log for this participant
            extra["room"] = room_name
        self.version += 1

    def detach_signal(self) -> None:
        """The signal connection went away; media and data carry on until a resume."""
        self.sink = DetachedSink()
        self.signal_lost_at = time.monotonic()

    def attach_signal(self, sink: SignalSink) -> float:
        """A resume: responses go to ``sink`` from now on (a connection still attached is
        closed). Returns since when the participant missed signalling."""
        old, self.sink = self.sink, sink
        old.close()
        lost_at = self.signal_lost_at if self.signal_lost_at is not None else time.monotonic()
        self.signal_lost_at = None
        return lost_at

    @property
    def last_reliable_sequence(self) -> int:
        """The highest reliable data sequence received from this client (LiveKit's
        ``last_message_seq``: the client resends what came after it)."""
        return self._last_reliable_seq

    # --- signal requests -------------------------------------------------------------------

    async def handle_offer(self, offer: rtc.SessionDescription) -> None:
        self.log.log(TRACE, "publisher offer:\n%s", offer.sdp)
        parsed = sdp_parse(offer.sdp)
        outgoing: dict[str, OutgoingTrack] = {}
        if isinstance(self.subscriber, SinglePcSubscriber):
            self.subscriber.offer_received()
            # Subscriptions go on the offer's receive-only sections.
            outgoing = self.tracks.place(parsed, self.sid)
        preferred = self.tracks.preferred_codecs()
        try:
            sdp = await self.publisher.handle_offer(offer.sdp, preferred, outgoing)
        except ValueError:
            if isinstance(self.subscriber, SinglePcSubscriber):
                self.subscriber.offer_refused()  # else no requirement would go out again
            raise
        self.log.log(TRACE, "publisher answer:\n%s", sdp)
        # Single PC: which track each of our sending sections carries (clients name remote
        # tracks by it; their receivers' own track ids are locally generated).
        mid_to_track_id = {mid: track.track_id for mid, track in outgoing.items()}
        answer = rtc.SessionDescription(
            type="answer", sdp=sdp, id=offer.id, mid_to_track_id=mid_to_track_id
        )
        self.send(rtc.SignalResponse(answer=answer))
        self._trickle(self.publisher.pc, rtc.SignalTarget.PUBLISHER)
        if isinstance(self.subscriber, SinglePcSubscriber):
            self.tracks.answered()
            self.subscriber.offer_answered()
        ready, removed = self.tracks.negotiated(parsed, sdp)
        for track in removed:
            self.log.info("track unpublished: %s", track.sid)
            self._listener.on_track_unpublished(self, track)
        for track in ready:
            self.log.info("track published: %s (%s)", track.sid, track.info.mime_type)
            if track.receiver is not None:
                track.receiver.on_first_subscriber = partial(self._track_subscribed, track.sid)
            if track.layered is not None:
                track.layered.dynacast.on_update = self._send_quality_update
            self._listener.on_track_published(self, track)

    def _subscription_refused(self, track_sid: str) -> None:
        """A subscribed track the client cannot decode (a rejected section on two PCs, no
        codec in common on one), refused as LiveKit refuses it."""
        self.log.info("subscription to %s refused: no codec in common", track_sid)
        error = rtc.SubscriptionResponse(
            track_sid=track_sid, err=models.SubscriptionError.SE_CODEC_UNSUPPORTED
        )
        self.send(rtc.SignalResponse(subscription_response=error))

    def _send_stream_state(self, downtrack: DownTrack, paused: bool) -> None:
        """The allocator paused or resumed a track for this subscriber's bandwidth (LiveKit
        ``StreamStateUpdate``)."""
        publisher_sid = downtrack.outgoing.stream_id.partition("|")[0]
        state = rtc.StreamState.PAUSED if paused else rtc.StreamState.ACTIVE
        info = rtc.StreamStateInfo(
            participant_sid=publisher_sid, track_sid=downtrack.outgoing.track_id, state=state
        )
        update = rtc.StreamStateUpdate(stream_states=[info])
        self.send(rtc.SignalResponse(stream_state_update=update))
        self.log.info(
            "track %s %s for bandwidth", info.track_sid, "paused" if paused else "resumed"
        )

    def _start_probing(self) -> None:
        if not self._probing and not self.is_closed:
            self._probing = True
            self.tasks.spawn(self._probe(), name="probe-padding")

    async def _probe(self) -> None:
        """Padding every few milliseconds while the allocator probes (LiveKit paces its
        probe clusters; a burst every 20 ms is as close as the event loop gets)."""
        try:
            while self.tracks.pad(time.monotonic()):  # noqa: ASYNC110 - a pacing timer
                await asyncio.sleep(PROBE_PADDING_INTERVAL_S)
        finally:
            self._probing = False

    def _send_requirement(self, audios: int, videos: int) -> None:
        requirement = rtc.MediaSectionsRequirement(num_audios=audios, num_videos=videos)
        self.send(rtc.SignalResponse(media_sections_requirement=requirement))

    def _send_quality_update(self, update: rtc.SubscribedQualityUpdate) -> None:
        self.send(rtc.SignalResponse(subscribed_quality_update=update))

    def _track_subscribed(self, track_sid: str) -> None:
        # LiveKit tells a publisher once, when its track first reaches a subscriber
        # (``sendTrackHasBeenSubscribed``); clients use it to know publishing really works.
        self.send(rtc.SignalResponse(track_subscribed=rtc.TrackSubscribed(track_sid=track_sid)))

    def handle_add_track(self, request: rtc.AddTrackRequest) -> None:
        """Announce a track and answer at once with its sid (LiveKit sends
        TrackPublishedResponse before any media arrives)."""
        grant = self.grant
        allowed = grant.can_publish and grant.can_publish_source(source_name(request.source))
        try:
            info = self.tracks.add(request, allowed)
        except PublishError as exc:
            # Echo the request as LiveKit does, but not a name too long to have been accepted.
            echoed = rtc.AddTrackRequest(cid=request.cid, type=request.type, source=request.source)
            if exc.reason != rtc.RequestResponse.LIMIT_EXCEEDED:
                echoed = request
            response = rtc.RequestResponse(reason=exc.reason, message=str(exc), add_track=echoed)
            self.send(rtc.SignalResponse(request_response=response))
            return
        self.send(
            rtc.SignalResponse(
                track_published=rtc.TrackPublishedResponse(cid=request.cid, track=info)
            )
        )

    def handle_mute(self, request: rtc.MuteTrackRequest) -> None:
        """The publisher muted or unmuted one of its tracks."""
        self._set_muted(request.sid, request.muted)

    def mute_by_server(self, track_sid: str, muted: bool) -> models.TrackInfo | None:
        """Mute (or unmute) a track from the server side (RoomService.MutePublishedTrack):
        the publisher is told with a ``mute`` response, everyone else by the update."""
        info = self._set_muted(track_sid, muted)
        if info is not None:
            request = rtc.MuteTrackRequest(sid=track_sid, muted=muted)
            self.send(rtc.SignalResponse(mute=request))
        return info

    def _set_muted(self, track_sid: str, muted: bool) -> models.TrackInfo | None:
        track = self.tracks.published.get(track_sid)
        if track is None:
            track = next((t for t in self.tracks.pending.values() if t.sid == track_sid), None)
        if track is None:
            return None
        if track.info.muted != muted:
            track.info.muted = muted
            self.version += 1
            self._listener.on_participant_changed(self)
        return track.info

    def allows(self, subscriber: Participant, track_sid: str) -> bool:
        return permission_allows(self.subscription_permission, subscriber, track_sid)

    def subscribe_to(
        self, publisher: TrackOwner, track: PublishedTrack, *, negotiate: bool
    ) -> None:
        if not self.grant.can_subscribe or self.is_closed:
            return
        if not publisher.allows(self, track.sid):
            self.send_permission_update(publisher, track, allowed=False)
            return
        if self.tracks.subscribe(publisher.sid, track, self.sid) and negotiate:
            self.subscriber.negotiate()

    def update_track_settings(self, request: rtc.UpdateTrackSettings) -> None:
        """``disabled`` pauses forwarding of a subscribed track (LiveKit: the client's adaptive
        stream hides it); quality or element size choose its simulcast layer."""
        self.tracks.update_settings(request, self.sid)

    def send_permission_update(
        self, publisher: TrackOwner, track: PublishedTrack, *, allowed: bool
    ) -> None:
        update = rtc.SubscriptionPermissionUpdate(
            participant_sid=publisher.sid, track_sid=track.sid, allowed=allowed
        )
        self.send(rtc.SignalResponse(subscription_permission_update=update))

    def unsubscribe_from(self, track: PublishedTrack) -> None:
        if self.tracks.unsubscribe(track.sid, self.sid, track) and not self.is_closed:
            self.subscriber.negotiate()

    async def handle_answer(self, answer: rtc.SessionDescription) -> None:
        self.log.log(TRACE, "subscriber answer:\n%s", answer.sdp)
        await self.subscriber.handle_answer(answer.sdp)

    async def handle_trickle(self, trickle: rtc.TrickleRequest, init: dict[str, object]) -> None:
        if isinstance(self.subscriber, SubscriberTransport) and (
            trickle.target == rtc.SignalTarget.SUBSCRIBER
        ):
            await self.subscriber.pc.add_candidate(init)
        else:
            await self.publisher.pc.add_candidate(init)

    def start_negotiation(self) -> None:
        """Send the first subscriber offer (with LiveKit's data channels) right after join; a
        single-PC client offers first instead."""
        if isinstance(self.subscriber, SubscriberTransport):
            self.subscriber.negotiate()

    # --- data ------------------------------------------------------------------------------

    def send_data(self, payload: bytes, *, reliable: bool) -> None:
        """Deliver a serialized DataPacket on the primary PC's channel of the same kind."""
        if self.is_closed:
            return
        if isinstance(self.subscriber, SubscriberTransport) and self.subscriber_primary:
            sent = self.subscriber.send_data(payload, reliable=reliable)
        else:
            channel = self._publisher_channels.get(_RELIABLE_LABEL if reliable else _LOSSY_LABEL)
            sent = channel.send(payload) if channel is not None else False
            if not sent and reliable and channel is None:
                sent = self._hold_until_channel(payload)
        if not sent and reliable:
            self.log.warning("reliable data to %s dropped: channel unavailable", self.identity)

    def _hold_until_channel(self, payload: bytes) -> bool:
        """Reliable data for a client whose own ``_reliable`` channel has not opened yet (a
        single-PC client creates it; SCTP and the channel's open follow its connect): kept, as
        a server-created channel keeps what it is given before it opens."""
        if len(self._data_before_channel) >= MAX_PENDING_MESSAGES:
            return False
        self._data_before_channel.append(payload)
        return True

    def _on_publisher_channel(self, channel: DataChannel) -> None:
        self._publisher_channels[channel.label] = channel
        if channel.label == _RELIABLE_LABEL:
            channel.on_message = lambda payload: self._on_data(payload, reliable=True)
            while self._data_before_channel:
                channel.send(self._data_before_channel.popleft())
        elif channel.label == _LOSSY_LABEL:
            channel.on_message = lambda payload: self._on_data(payload, reliable=False)
        else:
            self.log.debug("ignoring data channel %r", channel.label)

    def _on_data(self, payload: bytes, *, reliable: bool) -> None:
        if not self.grant.can_publish_data:
            self.log.info("data packet dropped: participant lacks canPublishData")
            return
        packet = models.DataPacket()
        try:
            packet.ParseFromString(payload)
        except DecodeError:
            self.log.debug("x undecodable data packet (%d bytes) dropped", len(payload))
            return
        if reliable and packet.sequence > 0:
            # Reliable packets carry a per-sender sequence; a stale one is a replay (LiveKit
            # `participant.go handleReceivedDataMessage`).
            if packet.sequence <= self._last_reliable_seq:
                return
            self._last_reliable_seq = packet.sequence
        self._listener.on_participant_data(self, packet, reliable=reliable)

    # --- transport state -------------------------------------------------------------------

    def _on_subscriber_state(self, state: ConnectionState) -> None:
        if self.subscriber_primary:
            self._on_primary_state(state)

    def _on_publisher_state(self, state: ConnectionState) -> None:
        if not self.subscriber_primary:
            self._on_primary_state(state)

    def _on_primary_state(self, state: ConnectionState) -> None:
        # The participant is ACTIVE once its primary PC connects (LiveKit
        # `participant.go onPrimaryTransportInitialConnected`).
        if state is ConnectionState.CONNECTED and self.state is ParticipantState.JOINED:
            self.set_state(ParticipantState.ACTIVE)
            self._listener.on_participant_active(self)
        elif state is ConnectionState.FAILED and not self.is_closed:
            # ICE consent expired or DTLS failed: the media path is gone, and so is this
            # participant (CONNECTION_TIMEOUT, as LiveKit). The client is asked to come back at
            # once: LiveKit asks for a resume, which needs ICE to recover from failure; a full
            # reconnect is what we can honour, and far better than a DISCONNECT the client
            # would take as the end of its session.
            self.log.info("primary peer connection failed")
            self._listener.on_participant_failed(
                self, models.DisconnectReason.CONNECTION_TIMEOUT, reconnect=True
            )
        elif state is ConnectionState.PEER_CLOSED and not self.is_closed:
            # The client is leaving (its leave may still be on the way, on another socket):
            # no leave back, which it would take for the server sending it away.
            self.log.info("primary peer connection closed by the client")
            self._listener.on_participant_failed(
                self, models.DisconnectReason.CLIENT_INITIATED, send_leave=False
            )

    def _on_negotiation_failed(self) -> None:
        # LiveKit issues a full reconnect (``IssueFullReconnect``, negotiation failed): the
        # client rejoins with fresh peer connections.
        if not self.is_closed:
            self._listener.on_participant_failed(
                self, models.DisconnectReason.STATE_MISMATCH, reconnect=True
            )

    def _send_offer(self, sdp: str, offer_id: int) -> None:
        self.send(
            rtc.SignalResponse(offer=rtc.SessionDescription(type="offer", sdp=sdp, id=offer_id))
        )
        if isinstance(self.subscriber, SubscriberTransport):
            self._trickle(self.subscriber.pc, rtc.SignalTarget.SUBSCRIBER)

    def _trickle(self, pc: RtcConnection, target: rtc.SignalTarget) -> None:
        """Trickle our candidates too (they are also in the SDP), the last marked final as
        LiveKit does when gathering completes."""
        candidates = pc.local_candidates()
        for index, init in enumerate(candidates):
            trickle = rtc.TrickleRequest(
                candidateInit=json.dumps(init), target=target, final=index == len(candidates) - 1
            )
            self.send(rtc.SignalResponse(trickle=trickle))

    # --- leaving ---------------------------------------------------------------------------

    def send_leave(self, reason: models.DisconnectReason, *, reconnect: bool = False) -> None:
        """Tell the client to go away for good, or to rejoin at once with ``reconnect``
        (protocol >= 13 reads ``action``, older clients ``can_reconnect``)."""
        action = (
            rtc.LeaveRequest.Action.RECONNECT if reconnect else rtc.LeaveRequest.Action.DISCONNECT
        )
        leave = rtc.LeaveRequest(can_reconnect=reconnect, reason=reason, action=action)
        self.send(rtc.SignalResponse(leave=leave))

    async def close(
        self, reason: models.DisconnectReason, *, send_leave: bool, reconnect: bool = False
    ) -> None:
        """Close everything; with ``send_leave`` the client is told first (to rejoin at once
        with ``reconnect``)."""
        if self.is_closed:
            return
        if send_leave:
            self.send_leave(reason, reconnect=reconnect)
        self.disconnect_reason = reason
        self.set_state(ParticipantState.DISCONNECTED)
        self.sink.close()
        await self.tasks.close()
        await self.subscriber.close()
        await self.publisher.close()
        self.tracks.close()
        self._endpoint.release()
        self.log.info("participant closed: %s", models.DisconnectReason.Name(reason).lower())
