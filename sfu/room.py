"""A room: its participants, the updates they see of each other, and data between them."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial

from livekit.protocol import agent_dispatch, models, rtc

from config.schema import AudioConfig
from protocol.ids import AGENT_DISPATCH_PREFIX, new_id
from sfu.congestion import CongestionSettings
from sfu.dynacast import PAUSE_DELAY_S
from sfu.events import EventBus, EventKind, RoomEvent
from sfu.forwarding import RoomForwards
from sfu.limits import Limits
from sfu.participant import Participant, ParticipantState
from sfu.participant_api import TrackOwner
from sfu.quality import WINDOW_S
from sfu.receiver import PublishedTrack
from sfu.room_data import deliver, stamp_sender
from sfu.room_reports import RoomReports
from sfu.server_rpc import ServerRpcs
from sfu.track_info import source_name

logger = logging.getLogger(__name__)


#: How long a non-publisher's changed info may wait to be broadcast (LiveKit: 3 s).
UPDATE_BATCH_S = 0.5


class RoomFullError(Exception):
    """The room already holds ``max_participants``."""


@dataclass(frozen=True)
class RoomSettings:
    """Per-room limits (``room.*`` config, or a CreateRoom request later)."""

    empty_timeout: int = 300
    departure_timeout: int = 20
    max_participants: int = 0
    limits: Limits = field(default_factory=Limits)
    """Sizes of what participants set about themselves (``limit.*``)."""
    audio: AudioConfig = field(default_factory=AudioConfig)
    """Active speaker detection (``audio.*``)."""
    dynacast_pause_delay: float = PAUSE_DELAY_S
    """Seconds before a publisher is told to drop layers (``video.dynacast_pause_delay``)."""
    congestion: CongestionSettings = field(default_factory=CongestionSettings)
    """Per-subscriber congestion control (``rtc.congestion_control``)."""


class Room:
    """One room hosted on this node (LiveKit ``rtc.Room``).

    :param now: monotonic seconds at creation, for ``empty_timeout``.
    """

    def __init__(
        self,
        *,
        name: str,
        sid: str,
        settings: RoomSettings,
        now: float,
        events: EventBus | None = None,
    ) -> None:
        self.name = name
        self.sid = sid
        self.settings = settings
        self.metadata = ""
        self.created_at = time.time()
        self.participants: dict[str, Participant] = {}
        self.closed = False
        self._version = 0
        self._batched: dict[str, Participant] = {}
        """Non-publishers whose changed info waits for the next batch (``_broadcast_soon``)."""
        self._batch_timer: asyncio.TimerHandle | None = None
        self._departed: deque[tuple[float, models.ParticipantInfo]] = deque(maxlen=256)
        """Who left lately (monotonic time, last info): a resumed client missed their leave."""
        self._created_monotonic = now
        self._last_left_monotonic: float | None = None
        self.events = events or EventBus()
        self.reports = RoomReports()
        """Speakers and connection quality, as each participant is told them."""
        self.rpcs = ServerRpcs()
        """RPCs the server API sends participants here (``PerformRpc``)."""
        self._quality_due = 0.0
        self.agent_dispatches: dict[str, agent_dispatch.AgentDispatch] = {}
        """Agent dispatches by id (AgentDispatchService), kept for the room's lifetime."""
        self.forwards = RoomForwards(self)
        """Participants forwarded here from other rooms, and ours forwarded elsewhere."""
        self.log = logging.LoggerAdapter(logger, {"room": name, "roomID": sid})

    # --- info ------------------------------------------------------------------------------

    def to_proto(self) -> models.Room:
        visible = [p for p in self.participants.values() if not p.hidden]
        forwarded = len(self.forwards.infos())
        return models.Room(
            sid=self.sid,
            name=self.name,
            empty_timeout=self.settings.empty_timeout,
            departure_timeout=self.settings.departure_timeout,
            max_participants=self.settings.max_participants,
            creation_time=int(self.created_at),
            creation_time_ms=int(self.created_at * 1000),
            metadata=self.metadata,
            # LiveKit does not count agents and egress (``IsDependent``); copies forwarded
            # here are participants to everyone here.
            num_participants=sum(1 for p in visible if not p.dependent) + forwarded,
            num_publishers=sum(1 for p in visible if p.tracks.published),
            version=models.TimedVersion(unix_micro=int(time.time() * 1e6), ticks=self._version),
        )

    def add_agent_dispatch(
        self, agent_name: str, metadata: str = "", attributes: Mapping[str, str] | None = None
    ) -> agent_dispatch.AgentDispatch:
        """Ask for an agent in this room (LiveKit ``AgentDispatch``, kept for its lifetime)."""
        dispatch = agent_dispatch.AgentDispatch(
            id=new_id(AGENT_DISPATCH_PREFIX),
            agent_name=agent_name,
            room=self.name,
            metadata=metadata,
            state=agent_dispatch.AgentDispatchState(created_at=time.time_ns()),
        )
        dispatch.attributes.update(attributes or {})
        self.agent_dispatches[dispatch.id] = dispatch
        self.log.info("agent dispatch %s created for %r", dispatch.id, agent_name)
        return dispatch

    def is_full(self, identity: str, dependent: bool = False) -> bool:
        """Whether a new participant may not join (a duplicate identity replaces, so fits;
        agents and egress always fit, LiveKit does not count them)."""
        if dependent:
            return False
        limit = self.settings.max_participants
        counted = sum(1 for p in self.participants.values() if not p.dependent)
        return limit > 0 and identity not in self.participants and counted >= limit

    # --- joining and leaving ---------------------------------------------------------------

    async def join(self, participant: Participant, join: rtc.JoinResponse) -> None:
        """Admit ``participant``: fill and send its JoinResponse, then tell the others.

        A participant with the identity of one already here replaces it; the old session gets
        a leave with DUPLICATE_IDENTITY (LiveKit ``roommanager.go StartSession``).
        """
        await self.take_seat(participant)
        join.room.CopyFrom(self.to_proto())
        join.participant.CopyFrom(participant.to_info())
        join.other_participants.extend(self.others_of(participant))
        participant.send(rtc.SignalResponse(join=join))
        participant.set_state(ParticipantState.JOINED)
        # Fast start (protocol >= 8): existing tracks are in the first subscriber offer.
        if participant.params.auto_subscribe:
            self.subscribe_to_all(participant, negotiate=False)
        participant.start_negotiation()
        self.broadcast_participant(participant)
        self.broadcast_room_update()
        mode = "one peer connection" if participant.params.single_pc else "two peer connections"
        self.log.info(
            "participant joined: %s (%s, %s)", participant.identity, participant.sid, mode
        )

    async def remove(
        self,
        participant: Participant,
        reason: models.DisconnectReason,
        *,
        send_leave: bool = False,
        reconnect: bool = False,
    ) -> None:
        """Take ``participant`` out of the room and tell the others it left; with
        ``send_leave`` it is told first (to rejoin at once with ``reconnect``)."""
        self.forget(participant)
        if participant.is_closed:
            return
        was_active = participant.state is ParticipantState.ACTIVE
        await participant.close(reason, send_leave=send_leave, reconnect=reconnect)
        if not participant.hidden:
            self.record_departure(participant.to_info())
        # Everyone learns of the departure before any subscriber re-offer (LiveKit order).
        self.broadcast_participant(participant)
        self.broadcast_room_update()
        self.forwards.source_gone(participant)
        self._unpublish_all(participant)
        self._emit(
            EventKind.PARTICIPANT_LEFT if was_active else EventKind.PARTICIPANT_CONNECTION_ABORTED,
            participant,
        )
        for other in list(self.participants.values()):
            for track in other.tracks.published.values():
                track.remove_subscriber(participant.sid)

    async def take_seat(self, participant: Participant) -> None:
        """Count ``participant`` as here. One with its identity already here is replaced (it
        gets a leave with DUPLICATE_IDENTITY); raises RoomFullError when there is no room."""
        previous = self.participants.get(participant.identity)
        if previous is not None:
            await self.remove(previous, models.DisconnectReason.DUPLICATE_IDENTITY, send_leave=True)
        if self.is_full(participant.identity, participant.dependent):
            raise RoomFullError(f"room {self.name} is full")
        self.seat(participant)

    def others_of(self, participant: Participant) -> list[models.ParticipantInfo]:
        """Everyone ``participant`` may see here: the visible others and forwarded copies."""
        others = [
            p.to_info() for p in self.participants.values() if p is not participant and not p.hidden
        ]
        return others + self.forwards.infos()

    def seat(self, participant: Participant) -> None:
        """Count ``participant`` as here (it joins, or moves in from another room)."""
        self.participants[participant.identity] = participant
        if not participant.dependent:
            self._last_left_monotonic = None
        participant.tracks.audio_config = self.settings.audio
        participant.tracks.dynacast_delay = self.settings.dynacast_pause_delay
        participant.tracks.congestion = self.settings.congestion

    def forget(self, participant: Participant) -> None:
        """No longer count ``participant`` as here (it leaves, or moves to another room)."""
        if self.participants.get(participant.identity) is participant:
            del self.participants[participant.identity]
            # LiveKit counts the room's departure timeout from the last removal of anyone,
            # agents included, once only dependent participants (or nobody) are left.
            if self._only_dependents_left():
                self._last_left_monotonic = time.monotonic()
        self.rpcs.recipient_gone(participant.identity)

    def record_departure(self, info: models.ParticipantInfo) -> None:
        """A resumed client is told who left while it was away."""
        self._departed.append((time.monotonic(), info))

    def resume(
        self, participant: Participant, reconnect: rtc.ReconnectResponse, lost_at: float
    ) -> None:
        """A participant's signal connection came back (LiveKit ``ResumeParticipant``): the
        ReconnectResponse first (the Rust SDK waits for it), those who left meanwhile, the
        whole room again, and the subscriber offer it may have missed. ``lost_at``: since
        when it missed signalling (``Participant.attach_signal``)."""
        reconnect.last_message_seq = participant.last_reliable_sequence
        participant.send(rtc.SignalResponse(reconnect=reconnect))
        if participant.params.protocol >= 9:
            gone = [info for left_at, info in self._departed if left_at >= lost_at]
            if gone:
                update = rtc.ParticipantUpdate(participants=gone)
                participant.send(rtc.SignalResponse(update=update))
        everyone = [
            p.to_info() for p in self.participants.values() if not p.hidden or p is participant
        ]
        everyone += self.forwards.infos()
        participant.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=everyone)))
        room_update = rtc.RoomUpdate(room=self.to_proto())
        participant.send(rtc.SignalResponse(room_update=room_update))
        # In two-peer-connection mode the server restarts the subscriber's ICE (LiveKit
        # ``ICERestart``): the client may have come back from another address.
        participant.subscriber.restart_ice()
        self.log.info("participant resumed: %s (%s)", participant.identity, participant.sid)

    def sync_state(self, participant: Participant, state: rtc.SyncState) -> bool:
        """A resumed client's view (LiveKit ``onSyncState``): every track it says it publishes
        must be ours, else it must rejoin (False). Disabled tracks, then its subscriptions,
        are applied again; the SDPs and data-channel states are for migration only."""
        tracks = participant.tracks
        known = set(tracks.published) | {track.sid for track in tracks.pending.values()}
        for published in state.publish_tracks:
            if not published.HasField("track") or published.track.sid not in known:
                participant.log.info("sync state names unknown track %s", published.track.sid)
                participant.send_leave(models.DisconnectReason.STATE_MISMATCH, reconnect=True)
                return False
        if state.track_sids_disabled:
            settings = rtc.UpdateTrackSettings(track_sids=state.track_sids_disabled, disabled=True)
            participant.update_track_settings(settings)
        if state.HasField("subscription"):
            self.update_subscription(participant, state.subscription)
        return True

    def _unpublish_all(self, participant: Participant) -> None:
        participant.tracks.pending.clear()
        for track in participant.tracks.unpublish_all():
            self._emit(EventKind.TRACK_UNPUBLISHED, participant, track)
            self.forwards.source_track_unpublished(participant, track)
            for other in list(self.participants.values()):
                other.unsubscribe_from(track)

    async def close(self, reason: models.DisconnectReason, *, reconnect: bool = False) -> None:
        """Remove everyone with a leave: DISCONNECT, or RECONNECT (rejoin now, the room going
        on elsewhere) with ``reconnect``."""
        self.closed = True
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        self.forwards.close()
        for participant in list(self.participants.values()):
            await self.remove(participant, reason, send_leave=True, reconnect=reconnect)
        self.log.info("room closed")

    def update_speakers(self) -> None:
        """One speaker interval ends (``sfu/room_reports.py``)."""
        self.reports.send_speakers(list(self.participants.values()))

    def tick(self, now: float) -> None:
        """Once a second: RTCP feedback to every publisher; connection quality every
        window."""
        for participant in list(self.participants.values()):
            participant.tracks.tick(now)
        if now >= self._quality_due:
            self._quality_due = now + WINDOW_S
            self.update_connection_quality()

    def update_connection_quality(self) -> None:
        self.reports.send_qualities(list(self.participants.values()))

    def idle_expired(self, now: float) -> bool:
        """Whether the room should close: nobody came within ``empty_timeout``, or everyone left
        more than ``departure_timeout`` ago (LiveKit ``room.go CloseIfEmpty``)."""
        if not self._only_dependents_left():
            return False
        if self._last_left_monotonic is None:
            return now - self._created_monotonic >= self.settings.empty_timeout
        return now - self._last_left_monotonic >= self.settings.departure_timeout

    def _only_dependents_left(self) -> bool:
        return all(p.dependent for p in self.participants.values())

    # --- updates ---------------------------------------------------------------------------

    def _emit(
        self, kind: EventKind, participant: Participant, track: PublishedTrack | None = None
    ) -> None:
        self.emit_info(kind, participant.to_info(), track.info if track is not None else None)

    def emit_info(
        self,
        kind: EventKind,
        participant: models.ParticipantInfo,
        track: models.TrackInfo | None = None,
    ) -> None:
        self.events.emit(RoomEvent(kind, self.to_proto(), participant, track))

    def broadcast_participant(self, changed: Participant) -> None:
        """Send ``changed``'s current info to everyone who may see it, and to the rooms it is
        forwarded to.

        Hidden participants are visible only to themselves (LiveKit never sends them to others).
        """
        update = rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[changed.to_info()]))
        for participant in self._recipients(changed):
            participant.send(update)
        self.forwards.source_changed(changed)

    def broadcast_info(self, info: models.ParticipantInfo, *, hidden: bool) -> None:
        """Send the info of someone not a participant here (a departed or forwarded one)."""
        if hidden:
            return
        update = rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[info]))
        for participant in list(self.participants.values()):
            participant.send(update)

    def _recipients(self, about: Participant) -> Iterable[Participant]:
        for participant in list(self.participants.values()):
            if participant is about or not about.hidden:
                yield participant

    def broadcast_room_update(self) -> None:
        self._version += 1
        update = rtc.SignalResponse(room_update=rtc.RoomUpdate(room=self.to_proto()))
        for participant in list(self.participants.values()):
            if participant.state is not ParticipantState.JOINING:
                participant.send(update)

    def update_participant_metadata(
        self, participant: Participant, request: rtc.UpdateParticipantMetadata
    ) -> None:
        """Apply an UpdateParticipantMetadata from the participant itself."""
        self.update_participant(participant, request.name, request.metadata, request.attributes)

    def update_participant(
        self,
        participant: Participant,
        name: str,
        metadata: str,
        attributes: Mapping[str, str],
    ) -> None:
        """Change name, metadata and attributes (empty values change nothing, an empty
        attribute value deletes the key, as in LiveKit) and tell everyone. Raises
        LimitExceededError, changing nothing, when the result would be over a limit."""
        self.settings.limits.check_update(participant.attributes, name, metadata, attributes)
        if name:
            participant.name = name
        if metadata:
            participant.metadata = metadata
        for key, value in attributes.items():
            if value:
                participant.attributes[key] = value
            else:
                participant.attributes.pop(key, None)
        participant.version += 1
        self._broadcast_soon(participant)

    def _broadcast_soon(self, changed: Participant) -> None:
        """A publisher's change goes out now; a non-publisher's within
        :data:`UPDATE_BATCH_S`, only its latest version (LiveKit batches non-publisher
        updates, ``room.go changeUpdateWorker``): one participant rewriting its metadata many
        times a second costs the room a couple of broadcasts, not one per change."""
        if changed.tracks.published:
            self.broadcast_participant(changed)
            return
        self._batched[changed.sid] = changed
        if self._batch_timer is None:
            loop = asyncio.get_running_loop()
            self._batch_timer = loop.call_later(UPDATE_BATCH_S, self._flush_batched)

    def _flush_batched(self) -> None:
        self._batch_timer = None
        batched, self._batched = self._batched, {}
        for participant in batched.values():
            if not participant.is_closed and not self.closed:
                self.broadcast_participant(participant)

    # --- ParticipantListener ---------------------------------------------------------------

    def on_participant_active(self, participant: Participant) -> None:
        self.broadcast_participant(participant)
        self._emit(EventKind.PARTICIPANT_JOINED, participant)

    def on_participant_changed(self, participant: Participant) -> None:
        self.broadcast_participant(participant)

    def on_track_published(self, participant: Participant, track: PublishedTrack) -> None:
        """Tell everyone, then subscribe those who auto-subscribe (LiveKit
        ``room.go onTrackPublished``)."""
        participant.version += 1
        self.broadcast_participant(participant)
        self._emit(EventKind.TRACK_PUBLISHED, participant, track)
        for other in list(self.participants.values()):
            if other is not participant and other.params.auto_subscribe:
                other.subscribe_to(participant, track, negotiate=True)
        self.forwards.source_track_published(participant, track)

    def on_track_unpublished(self, participant: Participant, track: PublishedTrack) -> None:
        participant.version += 1
        self.broadcast_participant(participant)
        self._emit(EventKind.TRACK_UNPUBLISHED, participant, track)
        for other in list(self.participants.values()):
            other.unsubscribe_from(track)
        self.forwards.source_track_unpublished(participant, track)

    def find_track(self, track_sid: str) -> tuple[TrackOwner, PublishedTrack] | None:
        for participant in self.participants.values():
            track = participant.tracks.published.get(track_sid)
            if track is not None:
                return participant, track
        return self.forwards.find_track(track_sid)

    def update_subscription(self, subscriber: Participant, request: rtc.UpdateSubscription) -> None:
        """Manual (un)subscription (LiveKit ``UpdateSubscription``); unknown tracks and missing
        permission are answered, not ignored."""
        sids = list(request.track_sids)
        sids += [sid for tracks in request.participant_tracks for sid in tracks.track_sids]
        for track_sid in sids:
            found = self.find_track(track_sid)
            if found is None:
                error = rtc.SubscriptionResponse(
                    track_sid=track_sid, err=models.SubscriptionError.SE_TRACK_NOTFOUND
                )
                subscriber.send(rtc.SignalResponse(subscription_response=error))
                continue
            publisher, track = found
            if not request.subscribe:
                subscriber.unsubscribe_from(track)
            elif not subscriber.grant.can_subscribe:
                update = rtc.SubscriptionPermissionUpdate(
                    participant_sid=publisher.sid, track_sid=track_sid, allowed=False
                )
                subscriber.send(rtc.SignalResponse(subscription_permission_update=update))
            else:
                subscriber.subscribe_to(publisher, track, negotiate=True)

    def update_subscription_permission(
        self, publisher: Participant, permission: rtc.SubscriptionPermission
    ) -> None:
        """Apply a publisher's allow list (LiveKit ``SubscriptionPermission``): subscribers
        that lose access are unsubscribed, those that gain it and auto-subscribe are
        subscribed, and each is told with ``subscription_permission_update``."""
        publisher.subscription_permission = permission
        self.apply_permission(publisher, publisher.tracks.published.values())
        self.forwards.source_permission_changed(publisher)

    def apply_permission(self, owner: TrackOwner, tracks: Iterable[PublishedTrack]) -> None:
        """Subscribe or unsubscribe everyone here as ``owner``'s permission now says."""
        for other in list(self.participants.values()):
            if other is owner:
                continue
            for track in list(tracks):
                allowed = owner.allows(other, track.sid)
                subscribed = track.sid in other.tracks.downtracks
                if subscribed and not allowed:
                    other.unsubscribe_from(track)
                    other.send_permission_update(owner, track, allowed=False)
                elif allowed and not subscribed and other.params.auto_subscribe:
                    other.send_permission_update(owner, track, allowed=True)
                    other.subscribe_to(owner, track, negotiate=True)

    # --- server API (RoomService) ------------------------------------------------------------

    def update_metadata(self, metadata: str) -> None:
        """New room metadata, announced with a RoomUpdate (LiveKit ``Room.SetMetadata``)."""
        self.metadata = metadata
        self.broadcast_room_update()

    def update_permission(
        self, participant: Participant, permission: models.ParticipantPermission
    ) -> None:
        """Replace a participant's rights (RoomService.UpdateParticipant).

        As in LiveKit ``ParticipantImpl.SetPermission``: losing canPublish unpublishes its
        tracks, losing canSubscribe drops its subscriptions, gaining canSubscribe subscribes an
        auto-subscriber to what is already published.
        """
        before = participant.grant
        participant.grant = dataclasses.replace(
            before,
            can_publish=permission.can_publish,
            can_subscribe=permission.can_subscribe,
            can_publish_data=permission.can_publish_data,
            can_publish_sources=tuple(source_name(s) for s in permission.can_publish_sources),
            hidden=permission.hidden,
            can_update_own_metadata=permission.can_update_metadata,
            can_subscribe_metrics=permission.can_subscribe_metrics,
        )
        participant.version += 1
        if before.can_publish and not permission.can_publish:
            removed = [*participant.tracks.published]
            self._unpublish_all(participant)
            # The publisher is told which of its tracks the server took down (LiveKit).
            for track_sid in removed:
                unpublished = rtc.TrackUnpublishedResponse(track_sid=track_sid)
                participant.send(rtc.SignalResponse(track_unpublished=unpublished))
        if before.can_subscribe and not permission.can_subscribe:
            for track_sid in list(participant.tracks.downtracks):
                found = self.find_track(track_sid)
                if found is not None:
                    participant.unsubscribe_from(found[1])
        elif permission.can_subscribe and not before.can_subscribe:
            if participant.params.auto_subscribe:
                self.subscribe_to_all(participant, negotiate=True)
        self.broadcast_participant(participant)

    def subscribe_to_all(self, participant: Participant, *, negotiate: bool) -> None:
        """Subscribe ``participant`` to every track here, forwarded ones included."""
        for other in list(self.participants.values()):
            if other is not participant:
                for track in list(other.tracks.published.values()):
                    participant.subscribe_to(other, track, negotiate=negotiate)
        self.forwards.subscribe(participant, negotiate=negotiate)

    async def perform_rpc(
        self, participant: Participant, method: str, payload: str, response_timeout_ms: int
    ) -> str:
        """Call ``method`` on ``participant`` (``RoomService.PerformRpc``); ``RpcFailed``."""
        send = partial(participant.send_data, reliable=True)
        return await self.rpcs.call(
            participant.identity, send, method, payload, response_timeout_ms
        )

    def send_server_data(self, packet: models.DataPacket, *, reliable: bool) -> None:
        """Data from the server API (RoomService.SendData): no sender identity."""
        self._deliver(packet, None, reliable=reliable)

    def on_participant_failed(
        self,
        participant: Participant,
        reason: models.DisconnectReason = models.DisconnectReason.CONNECTION_TIMEOUT,
        *,
        reconnect: bool = False,
        send_leave: bool = True,
    ) -> None:
        participant.tasks.spawn(
            self.remove(participant, reason, send_leave=send_leave, reconnect=reconnect),
            name="remove-failed-participant",
        )

    def on_participant_data(
        self, participant: Participant, packet: models.DataPacket, *, reliable: bool
    ) -> None:
        """Forward a DataPacket to the other participants (LiveKit
        ``room.go BroadcastDataPacketForRoom``): sender stamped by us, never echoed, only to
        ``destination_identities`` when given, on the same kind of channel it came in on."""
        if packet.WhichOneof("value") == "metrics":
            return  # metrics feed the server's own pipeline in LiveKit; never relayed as data
        if self.rpcs.consume(packet):
            return  # the answer to the server's own RPC
        stamp_sender(packet, participant, reliable=reliable)
        self._deliver(packet, participant, reliable=reliable)

    def _deliver(
        self, packet: models.DataPacket, sender: Participant | None, *, reliable: bool
    ) -> None:
        deliver(packet, list(self.participants.values()), sender, reliable=reliable)
