"""``RoomService.ForwardParticipant`` on one node: a participant's tracks also in another room.

The destination room gets a participant with the source's identity, name, metadata,
attributes and tracks, its kind detail FORWARDED (livekit-server-sdk: "same information with
the source participant except the kind to be Forwarded"). It has no connection: its tracks
are the source's own, so subscribers there get downtracks on the same receivers, and every
change to the source (info, tracks published or unpublished) is reflected. Forwarding stops
when the source leaves its room, when ``RemoveParticipant`` names the copy in the destination
room, or when either room closes.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from livekit.protocol import models

from protocol.ids import PARTICIPANT_PREFIX, new_id
from sfu.events import EventKind
from sfu.participant import Participant
from sfu.receiver import PublishedTrack

if TYPE_CHECKING:
    from sfu.room import Room

logger = logging.getLogger(__name__)


class ForwardError(Exception):
    """A forward that cannot be made; ``code`` is the Twirp error code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ForwardedParticipant:
    """The copy of ``source`` in a room it is forwarded to."""

    def __init__(self, source: Participant, source_room: Room) -> None:
        self.source = source
        self.source_room = source_room
        self.sid = new_id(PARTICIPANT_PREFIX)
        self.joined_at_ms = int(time.time() * 1000)

    @property
    def identity(self) -> str:
        return self.source.identity

    @property
    def published(self) -> dict[str, PublishedTrack]:
        return self.source.tracks.published

    def allows(self, subscriber: Participant, track_sid: str) -> bool:
        return self.source.allows(subscriber, track_sid)

    def to_info(self, *, gone: bool = False) -> models.ParticipantInfo:
        info = self.source.to_info()
        info.sid = self.sid
        info.joined_at = self.joined_at_ms // 1000
        info.joined_at_ms = self.joined_at_ms
        info.state = (
            models.ParticipantInfo.State.DISCONNECTED
            if gone
            else models.ParticipantInfo.State.ACTIVE
        )
        info.kind_details.append(models.ParticipantInfo.KindDetail.FORWARDED)
        return info


class RoomForwards:
    """One room's part in forwarding: the copies it hosts (``incoming``) and the rooms its
    own participants are forwarded to (``outgoing``)."""

    def __init__(self, room: Room) -> None:
        self._room = room
        self.incoming: dict[str, ForwardedParticipant] = {}
        """Identity -> the copy of a participant of another room, here."""
        self.outgoing: dict[str, dict[str, Room]] = {}
        """Identity of a participant here -> the rooms it is forwarded to, by name."""

    # --- starting and stopping -------------------------------------------------------------

    def forward(self, participant: Participant, destination: Room) -> ForwardedParticipant:
        """Forward ``participant`` (of this room) to ``destination``; raises ForwardError."""
        room = self._room
        if destination is room:
            raise ForwardError("invalid_argument", "destination room is the participant's room")
        if destination.closed:
            raise ForwardError("not_found", "destination room does not exist")
        if participant.identity in destination.participants:
            raise ForwardError(
                "already_exists", "a participant with that identity is in the destination room"
            )
        if participant.identity in destination.forwards.incoming:
            raise ForwardError("already_exists", "participant is already forwarded there")
        copy = ForwardedParticipant(participant, room)
        self.outgoing.setdefault(participant.identity, {})[destination.name] = destination
        destination.forwards._arrive(copy)
        room.log.info(
            "participant %s forwarded to room %s as %s",
            participant.identity,
            destination.name,
            copy.sid,
        )
        return copy

    def _arrive(self, copy: ForwardedParticipant) -> None:
        room = self._room
        self.incoming[copy.identity] = copy
        room.broadcast_info(copy.to_info(), hidden=copy.source.hidden)
        room.broadcast_room_update()
        room.emit_info(EventKind.PARTICIPANT_JOINED, copy.to_info())
        for track in list(copy.published.values()):
            self._track_arrived(copy, track)

    def stop(self, identity: str) -> bool:
        """End the copy of ``identity`` here; False when there is none."""
        copy = self.incoming.pop(identity, None)
        if copy is None:
            return False
        room = self._room
        for track in list(copy.published.values()):
            room.emit_info(EventKind.TRACK_UNPUBLISHED, copy.to_info(), track.info)
            for participant in list(room.participants.values()):
                participant.unsubscribe_from(track)
        gone = copy.to_info(gone=True)
        room.broadcast_info(gone, hidden=copy.source.hidden)
        room.broadcast_room_update()
        room.emit_info(EventKind.PARTICIPANT_LEFT, gone)
        source_links = copy.source_room.forwards.outgoing.get(identity, {})
        source_links.pop(room.name, None)
        if not source_links:
            copy.source_room.forwards.outgoing.pop(identity, None)
        room.log.info("forwarding of %s into this room stopped", identity)
        return True

    def close(self) -> None:
        """The room closes: copies here end, and so do copies of its participants."""
        for identity in list(self.incoming):
            self.stop(identity)
        for identity, destinations in list(self.outgoing.items()):
            for destination in list(destinations.values()):
                destination.forwards.stop(identity)

    # --- what the destination room reads ----------------------------------------------------

    def infos(self) -> list[models.ParticipantInfo]:
        return [copy.to_info() for copy in self.incoming.values() if not copy.source.hidden]

    def subscribe(self, participant: Participant, *, negotiate: bool) -> None:
        """Subscribe a participant here to the forwarded tracks, as to any others."""
        for copy in self.incoming.values():
            for track in list(copy.published.values()):
                participant.subscribe_to(copy, track, negotiate=negotiate)

    def find_track(self, track_sid: str) -> tuple[ForwardedParticipant, PublishedTrack] | None:
        for copy in self.incoming.values():
            track = copy.published.get(track_sid)
            if track is not None:
                return copy, track
        return None

    # --- the source room tells its participants' copies -------------------------------------

    def _copies_of(self, participant: Participant) -> list[tuple[Room, ForwardedParticipant]]:
        found = []
        for destination in list(self.outgoing.get(participant.identity, {}).values()):
            copy = destination.forwards.incoming.get(participant.identity)
            if copy is not None and copy.source is participant:
                found.append((destination, copy))
        return found

    def source_changed(self, participant: Participant) -> None:
        for destination, copy in self._copies_of(participant):
            destination.broadcast_info(copy.to_info(), hidden=participant.hidden)

    def source_track_published(self, participant: Participant, track: PublishedTrack) -> None:
        for destination, copy in self._copies_of(participant):
            destination.forwards._track_arrived(copy, track)

    def source_track_unpublished(self, participant: Participant, track: PublishedTrack) -> None:
        for destination, copy in self._copies_of(participant):
            destination.emit_info(EventKind.TRACK_UNPUBLISHED, copy.to_info(), track.info)
            for subscriber in list(destination.participants.values()):
                subscriber.unsubscribe_from(track)

    def source_gone(self, participant: Participant) -> None:
        """The source left its room (or moved out of it): its copies end."""
        for destination, _ in self._copies_of(participant):
            destination.forwards.stop(participant.identity)
        self.outgoing.pop(participant.identity, None)

    def _track_arrived(self, copy: ForwardedParticipant, track: PublishedTrack) -> None:
        room = self._room
        room.emit_info(EventKind.TRACK_PUBLISHED, copy.to_info(), track.info)
        for participant in list(room.participants.values()):
            if participant.params.auto_subscribe:
                participant.subscribe_to(copy, track, negotiate=True)
