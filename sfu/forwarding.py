"""``RoomService.ForwardParticipant``: a participant's tracks also in another room.

The destination room gets a participant with the source's identity, name, metadata,
attributes and tracks, its kind detail FORWARDED (livekit-server-sdk: "same information with
the source participant except the kind to be Forwarded"). It has no connection. Every change
to the source (info, tracks published or unpublished) is reflected. Forwarding stops when the
source leaves its room, when ``RemoveParticipant`` names the copy in the destination room, or
when either room closes.

Two rooms meet through two small interfaces, so that the destination may be on this node or
on another one (``sfu/remote_forward.py``):

- the destination room holds a :class:`ForwardCopy` per participant forwarded into it;
- the source room holds a :class:`ForwardLink` per room each of its participants is
  forwarded to, and tells it of every change.

On one node the copy (:class:`ForwardedParticipant`) shares the source's tracks, so
subscribers there get downtracks on the same receivers.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

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


class ForwardCopy(Protocol):
    """A participant as the room it is forwarded to holds it."""

    sid: str

    @property
    def identity(self) -> str: ...

    @property
    def hidden(self) -> bool: ...

    @property
    def published(self) -> dict[str, PublishedTrack]: ...

    def allows(self, subscriber: Participant, track_sid: str) -> bool: ...

    def to_info(self, *, gone: bool = False) -> models.ParticipantInfo: ...

    def ended(self) -> None:
        """The destination room dropped the copy (removed, or the room closed)."""


class ForwardLink(Protocol):
    """The source room's end of one forward of one of its participants."""

    def changed(self, participant: Participant) -> None: ...

    def permission_changed(self, participant: Participant) -> None: ...

    def track_published(self, participant: Participant, track: PublishedTrack) -> None: ...

    def track_unpublished(self, participant: Participant, track: PublishedTrack) -> None: ...

    def stop(self) -> None:
        """The source left (or moved out of) its room, or that room closed."""


def forwarded_info(
    info: models.ParticipantInfo, sid: str, joined_at_ms: int, *, gone: bool
) -> models.ParticipantInfo:
    """The copy's ``ParticipantInfo``: the source's, with the copy's own sid and join time,
    and the kind detail FORWARDED."""
    info.sid = sid
    info.joined_at = joined_at_ms // 1000
    info.joined_at_ms = joined_at_ms
    info.state = (
        models.ParticipantInfo.State.DISCONNECTED if gone else models.ParticipantInfo.State.ACTIVE
    )
    info.kind_details.append(models.ParticipantInfo.KindDetail.FORWARDED)
    return info


class ForwardedParticipant:
    """The copy of ``source`` in a room of the same node: the source's own tracks."""

    def __init__(self, source: Participant, source_room: Room, destination: str) -> None:
        self.source = source
        self.source_room = source_room
        self.destination = destination
        self.sid = new_id(PARTICIPANT_PREFIX)
        self.joined_at_ms = int(time.time() * 1000)

    @property
    def identity(self) -> str:
        return self.source.identity

    @property
    def hidden(self) -> bool:
        return self.source.hidden

    @property
    def published(self) -> dict[str, PublishedTrack]:
        return self.source.tracks.published

    def allows(self, subscriber: Participant, track_sid: str) -> bool:
        return self.source.allows(subscriber, track_sid)

    def to_info(self, *, gone: bool = False) -> models.ParticipantInfo:
        return forwarded_info(self.source.to_info(), self.sid, self.joined_at_ms, gone=gone)

    def ended(self) -> None:
        self.source_room.forwards.unlink(self.identity, self.destination)


class LocalLink:
    """A forward into ``destination``, a room of this node."""

    def __init__(self, destination: Room, copy: ForwardedParticipant) -> None:
        self._destination = destination
        self._copy = copy

    def changed(self, participant: Participant) -> None:
        self._destination.forwards.copy_changed(self._copy)

    def permission_changed(self, participant: Participant) -> None:
        self._destination.forwards.copy_permission_changed(self._copy)

    def track_published(self, participant: Participant, track: PublishedTrack) -> None:
        self._destination.forwards.track_arrived(self._copy, track)

    def track_unpublished(self, participant: Participant, track: PublishedTrack) -> None:
        self._destination.forwards.track_left(self._copy, track)

    def stop(self) -> None:
        self._destination.forwards.stop(self._copy.identity)


class RoomForwards:
    """One room's part in forwarding: the copies it hosts (``incoming``) and the forwards of
    its own participants (``outgoing``)."""

    def __init__(self, room: Room) -> None:
        self._room = room
        self.incoming: dict[str, ForwardCopy] = {}
        """Identity -> the copy of a participant of another room, here."""
        self.outgoing: dict[str, dict[str, ForwardLink]] = {}
        """Identity of a participant here -> its forwards, by destination room name."""

    # --- starting and stopping -------------------------------------------------------------

    def forward(self, participant: Participant, destination: Room) -> ForwardedParticipant:
        """Forward ``participant`` (of this room) to ``destination``, a room of this node;
        raises ForwardError."""
        if destination is self._room:
            raise ForwardError("invalid_argument", "destination room is the participant's room")
        if destination.closed:
            raise ForwardError("not_found", "destination room does not exist")
        destination.forwards.check_arrival(participant.identity)
        copy = ForwardedParticipant(participant, self._room, destination.name)
        self.link(participant.identity, destination.name, LocalLink(destination, copy))
        destination.forwards.arrive(copy)
        return copy

    def link(self, identity: str, destination: str, link: ForwardLink) -> None:
        """Record a forward of participant ``identity`` of this room to room ``destination``."""
        self.outgoing.setdefault(identity, {})[destination] = link
        self._room.log.info("participant %s forwarded to room %s", identity, destination)

    def unlink(self, identity: str, destination: str) -> None:
        links = self.outgoing.get(identity, {})
        links.pop(destination, None)
        if not links:
            self.outgoing.pop(identity, None)

    def check_arrival(self, identity: str) -> None:
        """Raises ForwardError unless a copy of ``identity`` may come into this room."""
        if identity in self._room.participants:
            raise ForwardError(
                "already_exists", "a participant with that identity is in the destination room"
            )
        if identity in self.incoming:
            raise ForwardError("already_exists", "participant is already forwarded there")

    def arrive(self, copy: ForwardCopy) -> None:
        room = self._room
        self.incoming[copy.identity] = copy
        room.broadcast_info(copy.to_info(), hidden=copy.hidden)
        room.broadcast_room_update()
        room.emit_info(EventKind.PARTICIPANT_JOINED, copy.to_info())
        for track in list(copy.published.values()):
            self.track_arrived(copy, track)

    def stop(self, identity: str) -> bool:
        """End the copy of ``identity`` here; False when there is none."""
        copy = self.incoming.pop(identity, None)
        if copy is None:
            return False
        room = self._room
        for track in list(copy.published.values()):
            self.track_left(copy, track)
        gone = copy.to_info(gone=True)
        room.broadcast_info(gone, hidden=copy.hidden)
        room.broadcast_room_update()
        room.emit_info(EventKind.PARTICIPANT_LEFT, gone)
        copy.ended()
        room.log.info("forwarding of %s into this room stopped", identity)
        return True

    def close(self) -> None:
        """The room closes: copies here end, and so do forwards of its participants."""
        for identity in list(self.incoming):
            self.stop(identity)
        for links in list(self.outgoing.values()):
            for link in list(links.values()):
                link.stop()
        self.outgoing.clear()

    # --- the destination room: what it reads, and changes to its copies --------------------

    def infos(self) -> list[models.ParticipantInfo]:
        return [copy.to_info() for copy in self.incoming.values() if not copy.hidden]

    def subscribe(self, participant: Participant, *, negotiate: bool) -> None:
        """Subscribe a participant here to the forwarded tracks, as to any others."""
        for copy in self.incoming.values():
            for track in list(copy.published.values()):
                participant.subscribe_to(copy, track, negotiate=negotiate)

    def find_track(self, track_sid: str) -> tuple[ForwardCopy, PublishedTrack] | None:
        for copy in self.incoming.values():
            track = copy.published.get(track_sid)
            if track is not None:
                return copy, track
        return None

    def copy_changed(self, copy: ForwardCopy) -> None:
        self._room.broadcast_info(copy.to_info(), hidden=copy.hidden)

    def copy_permission_changed(self, copy: ForwardCopy) -> None:
        """The source's subscription permission changed: as for a publisher here."""
        self._room.apply_permission(copy, copy.published.values())

    def track_arrived(self, copy: ForwardCopy, track: PublishedTrack) -> None:
        room = self._room
        room.emit_info(EventKind.TRACK_PUBLISHED, copy.to_info(), track.info)
        for participant in list(room.participants.values()):
            if participant.params.auto_subscribe:
                participant.subscribe_to(copy, track, negotiate=True)

    def track_left(self, copy: ForwardCopy, track: PublishedTrack) -> None:
        room = self._room
        room.emit_info(EventKind.TRACK_UNPUBLISHED, copy.to_info(), track.info)
        for subscriber in list(room.participants.values()):
            subscriber.unsubscribe_from(track)

    # --- the source room tells the forwards of its participants ----------------------------

    def _links(self, participant: Participant) -> list[ForwardLink]:
        return list(self.outgoing.get(participant.identity, {}).values())

    def source_changed(self, participant: Participant) -> None:
        for link in self._links(participant):
            link.changed(participant)

    def source_permission_changed(self, participant: Participant) -> None:
        for link in self._links(participant):
            link.permission_changed(participant)

    def source_track_published(self, participant: Participant, track: PublishedTrack) -> None:
        for link in self._links(participant):
            link.track_published(participant, track)

    def source_track_unpublished(self, participant: Participant, track: PublishedTrack) -> None:
        for link in self._links(participant):
            link.track_unpublished(participant, track)

    def source_gone(self, participant: Participant) -> None:
        """The source left its room (or moved out of it): its forwards end."""
        for link in self._links(participant):
            link.stop()
        self.outgoing.pop(participant.identity, None)
