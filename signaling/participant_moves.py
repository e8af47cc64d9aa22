"""``RoomService.MoveParticipant`` and ``ForwardParticipant``.

Both need ``roomAdmin`` for the source room and ``destinationRoom`` naming the destination
(LiveKit ``EnsureDestRoomPermission``). The call reaches the node hosting the source room
(``signaling/forward.py`` routes by ``room``). A destination room that does not exist yet is
made on that node.

- Destination here: the move is made in place (``sfu/moves.py``), the forward shares the
  source's tracks (``sfu/forwarding.py``).
- Destination on another node: a moved participant gets ``room_moved`` with a token for the
  new room, then a leave asking it to reconnect; its client joins the new room through the
  cluster, republishing its tracks. A forward relays the participant's media to that node
  (``signaling/forward_cluster.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from google.protobuf.message import Message
from livekit.protocol import models, room

from protocol.token import Claims
from sfu.forwarding import ForwardError
from sfu.moves import MoveError, check_move, move_participant, tell_moved
from sfu.participant import Participant
from sfu.room import Room
from sfu.rooms import RoomManager
from signaling.forward import routing_errors_as_twirp
from signaling.roomservice import admin_room
from signaling.twirp import TwirpError, permission_denied

logger = logging.getLogger(__name__)

#: Where a room is hosted: None when on this node (made here when new), else the node's id.
RoomPlacer = Callable[[str], Awaitable[str | None]]
#: Forwards (source room, participant) to a room (by name) on another node (by id).
RemoteForwarder = Callable[[Room, Participant, str, str], Awaitable[None]]


class ParticipantMoves:
    """The two handlers, on this node's rooms.

    :param place: finds or makes the destination room's node; the default keeps everything
        on this node (no cluster).
    :param max_room_name: ``limit.max_room_name_length``, for the destination's name too.
    :param forward_across: forwards to a room of another node (None: no cluster).
    """

    def __init__(
        self,
        rooms: RoomManager,
        place: RoomPlacer | None = None,
        max_room_name: int = 256,
        forward_across: RemoteForwarder | None = None,
    ) -> None:
        self.rooms = rooms
        self._place = place
        self._max_room_name = max_room_name
        self._forward_across = forward_across

    async def move_participant(
        self, claims: Claims, request: room.MoveParticipantRequest
    ) -> Message:
        source, participant, destination_name = self._request(claims, request)
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
        source, participant, destination_name = self._request(claims, request)
        if not destination_name:
            raise TwirpError("invalid_argument", "destination room is required")
        host = await self._host_of(destination_name)
        if host is not None:
            if self._forward_across is None:
                raise TwirpError("unavailable", f"destination room is on node {host}")
            await self._forward_across(source, participant, destination_name, host)
            return room.ForwardParticipantResponse()
        destination = self._local_room(destination_name)
        try:
            source.forwards.forward(participant, destination)
        except ForwardError as exc:
            raise TwirpError(exc.code, str(exc)) from None
        return room.ForwardParticipantResponse()

    # --- helpers ---------------------------------------------------------------------------

    def _request(
        self, claims: Claims, request: room.MoveParticipantRequest | room.ForwardParticipantRequest
    ) -> tuple[Room, Participant, str]:
        """(source room, participant, destination name) of a request its token allows: the
        source room's admin, and ``destinationRoom`` naming the destination."""
        source = admin_room(self.rooms, claims, request.room)
        if claims.video.destination_room != request.destination_room:
            raise permission_denied()
        if len(request.destination_room) > self._max_room_name:
            raise TwirpError("invalid_argument", "room name length exceeds limits")
        participant = source.participants.get(request.identity)
        if participant is None or participant.is_closed:
            raise TwirpError("not_found", "participant does not exist")
        return source, participant, request.destination_room

    async def _host_of(self, name: str) -> str | None:
        if self._place is None or self.rooms.get(name) is not None:
            return None
        with routing_errors_as_twirp():
            return await self._place(name)

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
        tell_moved(participant, models.Room(name=destination_name), token)
        source.log.info(
            "participant %s moved to room %s on node %s: reconnecting there",
            participant.identity,
            destination_name,
            host,
        )
        await source.remove(
            participant, models.DisconnectReason.MIGRATION, send_leave=True, reconnect=True
        )
