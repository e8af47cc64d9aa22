"""``RoomService.MoveParticipant`` on one node: a participant changes rooms, connection kept.

The participant's peer connections, data channels and published tracks stay as they are.
The source room sees it leave (its tracks unpublished, then a DISCONNECTED update), the
destination room sees it join with its tracks (livekit-server-sdk: "from the other observers'
perspective, the participant would've disconnected from the previous room and joined the new
one"). The participant itself gets ``room_moved`` (protocol 16): the new room, a token for it
and everyone there; both livekit-client and the Rust SDK then replace their remote
participants with those. Its subscriptions in the old room end and, auto-subscribing, it gets
the new room's tracks in the next subscriber offer.
"""

from __future__ import annotations

from livekit.protocol import models, rtc

from sfu.events import EventKind
from sfu.participant import Participant
from sfu.room import Room, RoomFullError

#: Clients read ``room_moved`` from protocol 16 (LiveKit PR #3648).
MIN_MOVE_PROTOCOL = 16


class MoveError(Exception):
    """A move that cannot be made; ``code`` is the Twirp error code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_move(source: Room, participant: Participant, destination_name: str) -> None:
    """Raise MoveError for a move LiveKit would refuse before touching anything."""
    if not destination_name:
        raise MoveError("invalid_argument", "destination room is required")
    if destination_name == source.name:
        raise MoveError("invalid_argument", "destination room is the participant's room")
    if participant.params.protocol < MIN_MOVE_PROTOCOL:
        raise MoveError(
            "failed_precondition",
            f"client protocol {participant.params.protocol} cannot be moved "
            f"(needs {MIN_MOVE_PROTOCOL})",
        )


async def move_participant(source: Room, participant: Participant, destination: Room) -> None:
    """Move ``participant`` from ``source`` to ``destination``, both hosted here."""
    check_move(source, participant, destination.name)
    if destination.is_full(participant.identity, participant.dependent):
        raise MoveError("resource_exhausted", "destination room is full")
    hook = participant.on_moved
    token = hook(destination.name, destination) if hook is not None else ""
    leave_source(source, participant)
    participant.rebind(destination, destination.name)
    try:
        await enter_destination(destination, participant, token)
    except RoomFullError as exc:  # filled meanwhile: the participant has nowhere to be
        await participant.close(models.DisconnectReason.JOIN_FAILURE, send_leave=True)
        raise MoveError("resource_exhausted", str(exc)) from None
    source.log.info("participant %s moved to room %s", participant.identity, destination.name)


def leave_source(source: Room, participant: Participant) -> None:
    """The source room's side: as if ``participant`` had left, its connection kept."""
    source.forget(participant)
    source.forwards.source_gone(participant)
    for track_sid in list(participant.tracks.downtracks):
        found = source.find_track(track_sid)
        if found is not None:
            participant.unsubscribe_from(found[1])
    gone = participant.to_info()
    gone.state = models.ParticipantInfo.State.DISCONNECTED
    for track in participant.tracks.published.values():
        source.emit_info(EventKind.TRACK_UNPUBLISHED, gone, track.info)
        for other in list(source.participants.values()):
            other.unsubscribe_from(track)
    if not participant.hidden:
        source.record_departure(gone)
    source.broadcast_info(gone, hidden=participant.hidden)
    source.broadcast_room_update()
    source.emit_info(EventKind.PARTICIPANT_LEFT, gone)


async def enter_destination(destination: Room, participant: Participant, token: str) -> None:
    """The destination room's side: ``room_moved`` to the participant (and the new token as a
    refresh, which the Rust SDK keeps for reconnecting), then the room learns of it."""
    await destination.take_seat(participant)
    tell_moved(participant, destination.to_proto(), token, destination.others_of(participant))
    if participant.params.auto_subscribe:
        destination.subscribe_to_all(participant, negotiate=False)
        participant.subscriber.negotiate()
    destination.broadcast_participant(participant)
    destination.broadcast_room_update()
    destination.emit_info(EventKind.PARTICIPANT_JOINED, participant.to_info())
    for track in list(participant.tracks.published.values()):
        destination.on_track_published(participant, track)


def tell_moved(
    participant: Participant,
    room: models.Room,
    token: str,
    others: list[models.ParticipantInfo] | None = None,
) -> None:
    """``room_moved`` to the participant, and its new token again as a refresh: the Rust SDK
    keeps only a refreshed token for reconnecting."""
    moved = rtc.RoomMovedResponse(
        room=room, token=token, participant=participant.to_info(), other_participants=others
    )
    participant.send(rtc.SignalResponse(room_moved=moved))
    if token:
        participant.send(rtc.SignalResponse(refresh_token=token))
