"""The server API: LiveKit's ``RoomService`` and ``AgentDispatchService`` over Twirp.

Grants as LiveKit checks them (``service/auth.go``): ``roomCreate`` for CreateRoom and
DeleteRoom, ``roomList`` for ListRooms, ``roomAdmin`` with ``room`` naming the request's room
for everything else. Errors as ``service/errors.go`` words them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from google.protobuf.message import Message
from livekit.protocol import agent_dispatch, models, room, rtc

from config import Config
from protocol.token import Claims
from routing.store import STORE_ERRORS
from sfu.limits import LimitExceededError, attributes_size
from sfu.participant import Participant
from sfu.room import Room
from sfu.rooms import RoomManager
from sfu.server_rpc import RpcFailed
from signaling.twirp import Handler, TwirpError, TwirpService, permission_denied

logger = logging.getLogger(__name__)

_Request = TypeVar("_Request", bound=Message)
#: The raw length of a SendData nonce (LiveKit: 16 bytes or none).
NONCE_LENGTH = 16


def twirp_handler(function: Callable[[Claims, _Request], Awaitable[Message]]) -> Handler:
    # The Twirp layer decodes into the method's own input type, so the cast is safe.
    return function  # type: ignore[return-value]


def ensure_admin(claims: Claims, room_name: str) -> None:
    grant = claims.video
    if not grant.room_admin or grant.room != room_name:
        raise permission_denied()


def room_not_found() -> TwirpError:
    return TwirpError("not_found", "requested room does not exist")


def admin_room(rooms: RoomManager, claims: Claims, name: str) -> Room:
    """The room a roomAdmin call acts on: the grant first, then the room."""
    ensure_admin(claims, name)
    found = rooms.get(name)
    if found is None:
        raise room_not_found()
    return found


#: Room names one ListRooms may ask for (a request naming millions blocked the loop).
MAX_LISTED_ROOMS = 1000


class RoomService:
    """The handlers, each one LiveKit RoomService method, acting on this node's rooms."""

    def __init__(
        self,
        rooms: RoomManager,
        config: Config,
        cluster_rooms: Callable[[], Awaitable[list[models.Room]]] | None = None,
        publish_room: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.rooms = rooms
        self.config = config
        self._cluster_rooms = cluster_rooms
        """The rooms every node stored (``rooms`` in Redis); ours are always fresher."""
        self._publish_room = publish_room
        """Writes a room's state to the store now, so other nodes see a change once the call
        returns (LiveKit's API waits until the store confirms, ``confirmExecution``)."""

    async def _published(self, name: str) -> None:
        if self._publish_room is not None:
            try:
                await self._publish_room(name)
            except STORE_ERRORS as exc:  # the periodic sync catches up
                logger.warning("room %s not yet in the store: %s", name, exc)

    def twirp(self, more: Mapping[str, Handler] | None = None) -> TwirpService:
        """The service; ``more`` adds handlers defined elsewhere (participant moves)."""
        return TwirpService(
            room.DESCRIPTOR.services_by_name["RoomService"],
            {
                **(more or {}),
                "CreateRoom": twirp_handler(self.create_room),
                "ListRooms": twirp_handler(self.list_rooms),
                "DeleteRoom": twirp_handler(self.delete_room),
                "ListParticipants": twirp_handler(self.list_participants),
                "GetParticipant": twirp_handler(self.get_participant),
                "RemoveParticipant": twirp_handler(self.remove_participant),
                "MutePublishedTrack": twirp_handler(self.mute_published_track),
                "UpdateParticipant": twirp_handler(self.update_participant),
                "UpdateSubscriptions": twirp_handler(self.update_subscriptions),
                "SendData": twirp_handler(self.send_data),
                "UpdateRoomMetadata": twirp_handler(self.update_room_metadata),
                "PerformRpc": twirp_handler(self.perform_rpc),
            },
        )

    # --- lookups ---------------------------------------------------------------------------

    def _room(self, claims: Claims, name: str) -> Room:
        return admin_room(self.rooms, claims, name)

    def _participant(
        self, claims: Claims, room_name: str, identity: str
    ) -> tuple[Room, Participant]:
        found = self._room(claims, room_name)
        participant = found.participants.get(identity)
        if participant is None or participant.is_closed:
            raise TwirpError("not_found", "participant does not exist")
        return found, participant

    def _check_metadata(self, metadata: str) -> None:
        limit = self.config.room.max_metadata_size or self.config.limit.max_metadata_size
        if limit and len(metadata.encode()) > limit:
            raise TwirpError("invalid_argument", "metadata size exceeds limits", limit=str(limit))

    # --- rooms -----------------------------------------------------------------------------

    async def create_room(self, claims: Claims, request: room.CreateRoomRequest) -> models.Room:
        if not claims.video.room_create:
            raise permission_denied()
        name = request.name
        if not name:
            raise TwirpError("invalid_argument", "room name cannot be empty")
        if len(name) > self.config.limit.max_room_name_length:
            raise TwirpError("invalid_argument", "room name length exceeds limits")
        self._check_metadata(request.metadata)
        settings = self.rooms.settings
        settings = dataclasses.replace(
            settings,
            empty_timeout=request.empty_timeout or settings.empty_timeout,
            departure_timeout=request.departure_timeout or settings.departure_timeout,
            max_participants=request.max_participants or settings.max_participants,
        )
        existing = self.rooms.get(name)

        def add_agents(target: Room) -> None:
            for agent in request.agents:
                target.add_agent_dispatch(agent.agent_name, agent.metadata, agent.attributes)

        if existing is None:
            created = self.rooms.create(name, settings, request.metadata, configure=add_agents)
        else:
            # LiveKit's allocator applies the request's non-zero fields to an existing room.
            created = existing
            created.settings = settings
            if request.metadata:
                created.update_metadata(request.metadata)
            add_agents(created)
        await self._published(name)
        return created.to_proto()

    async def list_rooms(self, claims: Claims, request: room.ListRoomsRequest) -> Message:
        if not claims.video.room_list:
            raise permission_denied()
        if len(request.names) > MAX_LISTED_ROOMS:
            raise TwirpError("invalid_argument", f"more than {MAX_LISTED_ROOMS} room names")
        names = set(request.names)
        listed = {r.name: r.to_proto() for r in self.rooms.rooms.values()}
        if self._cluster_rooms is not None:
            try:
                for stored in await self._cluster_rooms():
                    listed.setdefault(stored.name, stored)
            except STORE_ERRORS as exc:  # our own rooms are still right
                logger.warning("ListRooms without other nodes' rooms: %s", exc)
        rooms = [r for name, r in listed.items() if not names or name in names]
        return room.ListRoomsResponse(rooms=rooms)

    async def delete_room(self, claims: Claims, request: room.DeleteRoomRequest) -> Message:
        if not claims.video.room_create:
            raise permission_denied()
        found = self.rooms.get(request.room)
        if found is None:
            raise room_not_found()
        await self.rooms.close_room(found, models.DisconnectReason.ROOM_DELETED)
        await self._published(request.room)
        return room.DeleteRoomResponse()

    async def update_room_metadata(
        self, claims: Claims, request: room.UpdateRoomMetadataRequest
    ) -> Message:
        self._check_metadata(request.metadata)
        found = self._room(claims, request.room)
        found.update_metadata(request.metadata)
        await self._published(request.room)
        return found.to_proto()

    async def send_data(self, claims: Claims, request: room.SendDataRequest) -> Message:
        found = self._room(claims, request.room)
        if request.nonce and len(request.nonce) != NONCE_LENGTH:
            raise TwirpError("invalid_argument", f"nonce must be {NONCE_LENGTH} bytes or empty")
        user = models.UserPacket(
            payload=request.data,
            topic=request.topic if request.HasField("topic") else None,
            nonce=request.nonce,
            destination_identities=request.destination_identities,
            destination_sids=request.destination_sids,
        )
        packet = models.DataPacket(
            kind=request.kind,
            user=user,
            destination_identities=request.destination_identities,
        )
        found.send_server_data(packet, reliable=request.kind == models.DataPacket.Kind.RELIABLE)
        return room.SendDataResponse()

    # --- participants ----------------------------------------------------------------------

    async def list_participants(
        self, claims: Claims, request: room.ListParticipantsRequest
    ) -> Message:
        found = self._room(claims, request.room)
        infos = [p.to_info() for p in found.participants.values() if not p.is_closed]
        infos += [copy.to_info() for copy in found.forwards.incoming.values()]
        return room.ListParticipantsResponse(participants=infos)

    async def get_participant(
        self, claims: Claims, request: room.RoomParticipantIdentity
    ) -> Message:
        copy = self._room(claims, request.room).forwards.incoming.get(request.identity)
        if copy is not None:
            return copy.to_info()
        return self._participant(claims, request.room, request.identity)[1].to_info()

    async def remove_participant(
        self, claims: Claims, request: room.RoomParticipantIdentity
    ) -> Message:
        # RemoveParticipant on a forwarded copy ends the forwarding (livekit-server-sdk).
        if self._room(claims, request.room).forwards.stop(request.identity):
            return room.RemoveParticipantResponse()
        found, participant = self._participant(claims, request.room, request.identity)
        await found.remove(
            participant, models.DisconnectReason.PARTICIPANT_REMOVED, send_leave=True
        )
        return room.RemoveParticipantResponse()

    async def perform_rpc(self, claims: Claims, request: room.PerformRpcRequest) -> Message:
        """Call an RPC method on a participant and return its answer (LiveKit
        ``RoomManager.PerformRpc``); RPC errors come back with LiveKit's codes."""
        if not request.destination_identity:
            raise TwirpError("invalid_argument", "destination identity is required")
        found, participant = self._participant(claims, request.room, request.destination_identity)
        try:
            payload = await found.perform_rpc(
                participant, request.method, request.payload, request.response_timeout_ms
            )
        except RpcFailed as exc:
            raise TwirpError(_RPC_TWIRP_CODES.get(exc.code, "internal"), str(exc)) from None
        return room.PerformRpcResponse(payload=payload)

    async def mute_published_track(
        self, claims: Claims, request: room.MuteRoomTrackRequest
    ) -> Message:
        _, participant = self._participant(claims, request.room, request.identity)
        if not request.muted and not self.config.room.enable_remote_unmute:
            raise TwirpError("failed_precondition", "remote unmute not enabled")
        info = participant.mute_by_server(request.track_sid, request.muted)
        if info is None:
            raise TwirpError("not_found", "track does not exist")
        return room.MuteRoomTrackResponse(track=info)

    async def update_participant(
        self, claims: Claims, request: room.UpdateParticipantRequest
    ) -> Message:
        self._check_metadata(request.metadata)
        limits = self.config.limit
        if len(request.name.encode()) > limits.max_participant_name_length:
            raise TwirpError("invalid_argument", "name length exceeds limits")
        if attributes_size(request.attributes) > limits.max_attributes_size:
            raise TwirpError("invalid_argument", "attributes size exceeds limits")
        found, participant = self._participant(claims, request.room, request.identity)
        try:
            # The attributes it would leave are checked too: many small updates must not add
            # up past the limit.
            found.update_participant(
                participant, request.name, request.metadata, request.attributes
            )
        except LimitExceededError as exc:
            raise TwirpError("invalid_argument", str(exc)) from None
        if request.HasField("permission"):
            found.update_permission(participant, request.permission)
        return participant.to_info()

    async def update_subscriptions(
        self, claims: Claims, request: room.UpdateSubscriptionsRequest
    ) -> Message:
        found, participant = self._participant(claims, request.room, request.identity)
        update = rtc.UpdateSubscription(
            track_sids=request.track_sids,
            subscribe=request.subscribe,
            participant_tracks=request.participant_tracks,
        )
        found.update_subscription(participant, update)
        return room.UpdateSubscriptionsResponse()


#: LiveKit's mapping of RPC error codes to API errors (``DataChannelRpcError.PsrpcError``).
_RPC_TWIRP_CODES = {
    1500: "internal",
    1501: "canceled",
    1502: "canceled",
    1503: "unavailable",
    1504: "malformed",
    1505: "internal",
    1400: "invalid_argument",
    1401: "not_found",
    1402: "invalid_argument",
}


class AgentDispatchService:
    """Dispatches stored per room (LiveKit ``agent_dispatch_service.go``); a new one is
    offered to the agent workers at once (``signaling/agents.py``).

    :param launch: starts a dispatch's room job; None when no workers are served here.
    """

    def __init__(
        self,
        rooms: RoomManager,
        launch: Callable[[agent_dispatch.AgentDispatch], None] | None = None,
    ) -> None:
        self.rooms = rooms
        self._launch = launch

    def twirp(self) -> TwirpService:
        return TwirpService(
            agent_dispatch.DESCRIPTOR.services_by_name["AgentDispatchService"],
            {
                "CreateDispatch": twirp_handler(self.create_dispatch),
                "DeleteDispatch": twirp_handler(self.delete_dispatch),
                "ListDispatch": twirp_handler(self.list_dispatch),
            },
        )

    def _room(self, claims: Claims, name: str) -> Room:
        return admin_room(self.rooms, claims, name)

    async def create_dispatch(
        self, claims: Claims, request: agent_dispatch.CreateAgentDispatchRequest
    ) -> Message:
        if not claims.video.room_admin or claims.video.room != request.room:
            raise permission_denied()
        target = self.rooms.get(request.room)
        if target is None:
            # LiveKit creates the room first when rooms may be created on demand: a room
            # with no agents configured, so it gets the automatic dispatch too.
            if not self.rooms.auto_create:
                raise TwirpError("not_found", "requested room does not exist")
            target = self.rooms.create(request.room, self.rooms.settings)
        dispatch = target.add_agent_dispatch(
            request.agent_name, request.metadata, request.attributes
        )
        if self._launch is not None:
            self._launch(dispatch)
        return dispatch

    async def delete_dispatch(
        self, claims: Claims, request: agent_dispatch.DeleteAgentDispatchRequest
    ) -> Message:
        target = self._room(claims, request.room)
        dispatch = target.agent_dispatches.pop(request.dispatch_id, None)
        if dispatch is None:
            raise TwirpError("not_found", "dispatch ID not found")
        dispatch.state.deleted_at = time.time_ns()
        return dispatch

    async def list_dispatch(
        self, claims: Claims, request: agent_dispatch.ListAgentDispatchRequest
    ) -> Message:
        target = self._room(claims, request.room)
        dispatches = [
            d
            for d in target.agent_dispatches.values()
            if not request.dispatch_id or d.id == request.dispatch_id
        ]
        return agent_dispatch.ListAgentDispatchResponse(agent_dispatches=dispatches)
