"""``RoomService.MoveParticipant`` and ``ForwardParticipant``.

Both need ``roomAdmin`` for the source room and ``destinationRoom`` naming the destination
(LiveKit ``EnsureDestRoomPermission``). The call reaches the node hosting the source room
(``signaling/forward.py`` routes by ``room``). A destination room that does not exist yet is
made on that node.

- Destination here: the move is made in place (``sfu/moves.py``), the forward shares the
  source's tracks (``sfu/forwarding.py``).
- Destination on another node: a moved participant gets ``room_moved`` with a token for the
  new room, then a leave asking it to reconnect; its client joins the new room through the
  cluster, republishing its tracks. Forwarding needs the media on the node of the
  destination room, which only that one node has, so it is refused with
  ``failed_precondition``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from google.protobuf.message import Message
from livekit.protocol import models, room, rtc

from protocol.token import Claims
from routing.router import RoutingError
from routing.store import STORE_ERRORS
from sfu.forwarding import ForwardError
from sfu.moves import MoveError, check_move, move_participant
from sfu.participant import Participant
from sfu.room import Room
from sfu.rooms import RoomManager
from signaling.roomservice import admin_room
from signaling.twirp import TwirpError, permission_denied

logger = logging.getLogger(__name__)

#: Where a room is hosted: None when on this node (made here when new), else the node's id.
RoomPlacer = Callable[[str], Awaitable[str | None]]


class ParticipantMoves:
    """The two handlers, on this node's rooms.

    :param place: finds or makes the destination room's node; the default keeps everything
        on this node (no cluster).
    """

    def __init__(self, rooms: RoomManager, place: RoomPlacer | None = None) -> None:
        self.rooms = rooms
        self._place = place

    async def move_participant(
        self, claims: Claims, request: room.MoveParticipantRequest
    ) -> Message:
        source, participant = self._source(claims, request.room, request.identity)
        destination_name = request.destination_room
        self._check_destination(claims, destination_name)
        try:
            check_move(source, participant, destination_name)
            host = await self._host_of(destination_name)
            if host is None:
                destination = self._local_room(destination_name)
                await move_participant(source, participant, destination)
            else:
                await self._move_across(source, participant, destination_name, host)
        except MoveError as exc:
            raise TwirpError(exc.code, str(exc)) from None
        return room.MoveParticipantResponse()

    async def forward_participant(
        self, claims: Claims, request: room.ForwardParticipantRequest
    ) -> Message:
        source, participant = self._source(claims, request.room, request.identity)
        destination_name = request.destination_room
        self._check_destination(claims, destination_name)
        if not destination_name:
            raise TwirpError("invalid_argument", "destination room is required")
        host = await self._host_of(destination_name)
        if host is not None:
            raise TwirpError(
                "failed_precondition",
                f"destination room is hosted on node {host}; "
                "participants are forwarded only between rooms of one node",
            )
        destination = self._local_room(destination_name)
        try:
            source.forwards.forward(participant, destination)
        except ForwardError as exc:
            raise TwirpError(exc.code, str(exc)) from None
        return room.ForwardParticipantResponse()

    # --- helpers ---------------------------------------------------------------------------

    def _source(self, claims: Claims, room_name: str, identity: str) -> tuple[Room, Participant]:
        source = admin_room(self.rooms, claims, room_name)
        participant = source.participants.get(identity)
        if participant is None or participant.is_closed:
            raise TwirpError("not_found", "participant does not exist")
        return source, participant

    @staticmethod
    def _check_destination(claims: Claims, destination_name: str) -> None:
        if claims.video.destination_room != destination_name:
            raise permission_denied()

    async def _host_of(self, name: str) -> str | None:
        if self._place is None or self.rooms.get(name) is not None:
            return None
        try:
            return await self._place(name)
        except RoutingError as exc:
            raise TwirpError("unavailable", f"no node can host the room: {exc}") from None
        except STORE_ERRORS as exc:
            logger.warning("room routing failed: %s", exc)
            raise TwirpError("unavailable", "room routing is unavailable") from None

    def _local_room(self, name: str) -> Room:
        # The API made it, so it may (LiveKit creates the destination room).
        return self.rooms.get_or_create(name, may_create=True)

    @staticmethod
    async def _move_across(
        source: Room, participant: Participant, destination_name: str, host: str
    ) -> None:
        """The destination is on another node: the client is told of the move and asked to
        reconnect, which takes it there with the new room's token."""
        hook = participant.on_moved
        token = hook(destination_name, None) if hook is not None else ""
        moved = rtc.RoomMovedResponse(
            room=models.Room(name=destination_name),
            token=token,
            participant=participant.to_info(),
        )
        participant.send(rtc.SignalResponse(room_moved=moved))
        participant.send(rtc.SignalResponse(refresh_token=token))
        source.log.info(
            "participant %s moved to room %s on node %s: reconnecting there",
            participant.identity,
            destination_name,
            host,
        )
        await source.remove(
            participant, models.DisconnectReason.MIGRATION, send_leave=True, reconnect=True
        )
