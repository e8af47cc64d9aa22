"""The HTTP surface: health check, ``/rtc`` WebSocket, validation endpoints and CORS."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import cast

from aiohttp import web
from google.protobuf import json_format
from livekit.protocol import models, rtc
from livekit.protocol import room as room_pb
from multidict import CIMultiDict, MultiDict

from config import Config
from protocol.ids import PARTICIPANT_PREFIX, new_id
from protocol.token import Claims, refresh_token
from routing.node import NodeState
from routing.router import Router, RoutingError
from routing.store import STORE_ERRORS
from sfu.endpoint import Endpoints, media_bind_address
from sfu.participant import Participant
from sfu.participant_api import JoinParams, is_dependent
from sfu.room import Room, RoomFullError
from sfu.rooms import RoomManager, RoomNotFoundError
from signaling.absent_services import absent_services
from signaling.agent_cluster import SERVICE as AGENTS_SERVICE
from signaling.agent_cluster import AgentCluster
from signaling.agents import AgentService
from signaling.auth import ConnectRequest, HttpError, validate_connect
from signaling.forward import ApiForwarder
from signaling.forward_cluster import SERVICE as FORWARDS_SERVICE
from signaling.forward_cluster import ForwardCluster
from signaling.ice_servers import ice_servers
from signaling.participant_moves import ParticipantMoves
from signaling.relay import relay_to_host
from signaling.roomservice import AgentDispatchService, RoomService, twirp_handler
from signaling.scenarios import ice_preference, take_resume_cut
from signaling.session import SignalSession
from signaling.sink import WebSocketSink
from signaling.socket import LocalSocket, SignalSocket
from signaling.twirp import TwirpServer, add_twirp_routes

logger = logging.getLogger(__name__)

#: The protocol version we implement, stated honestly: room moves (16) and the packet trailer
#: (17) are not implemented, and clients gate those features on this number.
SERVER_PROTOCOL = 15
#: Clients gate features on `server_info.version` as a LiveKit server version (RPC needs
#: >= 1.8.0, the release that introduced protocol 15), so we state the LiveKit release whose
#: protocol we implement there, and our own version in `debug_info`.
LIVEKIT_COMPATIBLE_VERSION = "1.8.0"
PING_INTERVAL_S = 5
PING_TIMEOUT_S = 15
#: LiveKit pings the WebSocket every 10 s (`wsprotocol.go`).
WS_HEARTBEAT_S = 10.0
_KINDS = {
    name.lower(): cast(models.ParticipantInfo.Kind, value)
    for name, value in models.ParticipantInfo.Kind.items()
}


@dataclass(frozen=True)
class SignalingContext:
    """What the HTTP handlers need from the composition root."""

    config: Config
    rooms: RoomManager
    node_id: str
    version: str
    endpoints: Endpoints
    router: Router
    publish_room: Callable[[str], Awaitable[None]] | None = None
    """Writes one room's state to the cluster store at once (set by the membership)."""
    twirp_stats: Counter[tuple[str, str, int, str]] = field(default_factory=Counter)
    """Server API requests by (service, method, HTTP status, Twirp code or "")."""
    agents: AgentService | None = None
    """The agent workers connected here (``/agent``), which dispatches are offered to."""


CONTEXT = web.AppKey("signaling_context", SignalingContext)
FORWARDER = web.AppKey("api_forwarder", ApiForwarder)
FORWARDS = web.AppKey("forward_cluster", ForwardCluster)


@web.middleware
async def cors_and_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """CORS as LiveKit does (any origin, method and header; preflight cached a day), and
    :class:`HttpError` answered as plain text. Browsers read the status of a failed connect
    from ``/rtc/validate`` cross-origin, so every status, 404 included, needs the header."""
    if request.method == "OPTIONS":
        response: web.StreamResponse = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
        requested = request.headers.get("Access-Control-Request-Headers", "*")
        response.headers["Access-Control-Allow-Headers"] = requested
        response.headers["Access-Control-Max-Age"] = "86400"
    else:
        try:
            response = await handler(request)
        except HttpError as exc:
            response = web.Response(status=exc.status, text=exc.reason)
        except web.HTTPException as exc:
            response = web.Response(status=exc.status, text=exc.text or exc.reason)
    if not response.prepared:
        response.headers["Access-Control-Allow-Origin"] = "*"
    return response


async def health(request: web.Request) -> web.Response:
    """200 OK while serving; 406 Not Ready when the node's stats are stale (LiveKit); 503
    while draining, so a load balancer sends new sessions elsewhere (existing rooms carry on
    and their participants stay connected: their WebSockets are already open)."""
    router = request.app[CONTEXT].router
    if router.node.state is NodeState.SHUTTING_DOWN:
        return web.Response(status=503, text="Draining")
    if not router.healthy(time.monotonic()):
        return web.Response(status=406, text="Not Ready")
    return web.Response(text="OK")


async def validate(request: web.Request) -> web.Response:
    """``/rtc/validate`` and ``/rtc/v1/validate``: what the join would say, without joining.
    An unknown room must be 404 "requested room does not exist" exactly: livekit-client takes
    any other 404 on the v1 path for a server without it and falls back to two PCs."""
    ctx = request.app[CONTEXT]
    single_pc_path = request.path.startswith("/rtc/v1")
    connect = validate_connect(
        request.headers, request.query, ctx.config, single_pc_path=single_pc_path
    )
    if ctx.rooms.get(connect.room_name) is None:
        try:
            host = await ctx.router.room_host(connect.room_name, create=False)
        except STORE_ERRORS as exc:
            logger.warning("validate: room lookup in the store failed: %s", exc)
            host = None
        if host is not None and host != ctx.router.node_id:
            return web.Response(text="success")  # the room lives on another node
    _find_room(ctx, connect, create=False)
    return web.Response(text="success")


def _find_room(ctx: SignalingContext, connect: ConnectRequest, *, create: bool) -> Room | None:
    """The room to join; refused before the upgrade when it may not be created or is full."""
    rooms = ctx.rooms
    room = rooms.get(connect.room_name)
    may_create = rooms.auto_create or connect.claims.video.room_create
    if room is None and not may_create:
        raise HttpError(404, "requested room does not exist")
    if room is None and create:
        room_config = connect.claims.room_config
        configure = partial(configure_room, room_config) if room_config is not None else None
        try:
            room = rooms.get_or_create(
                connect.room_name, may_create=may_create, configure=configure
            )
        except RoomNotFoundError as exc:
            raise HttpError(404, str(exc)) from exc
    claims = connect.claims
    kind = _KINDS.get(claims.kind.lower(), models.ParticipantInfo.Kind.STANDARD)
    dependent = is_dependent(kind, claims.video.agent, claims.video.recorder)
    if room is not None and room.is_full(claims.identity, dependent):
        raise HttpError(500, "room has exceeded its max participants")
    return room


def configure_room(room_config: Mapping[str, object], room: Room) -> None:
    """A token's ``roomConfig`` for the room its join creates (LiveKit
    ``SetRoomConfiguration``): timeouts, size, metadata and the agents to dispatch. A live room
    is not changed by it."""
    config = room_pb.RoomConfiguration()
    try:
        json_format.ParseDict(dict(room_config), config, ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        room.log.warning("token room configuration ignored: %s", exc)
        return
    settings = room.settings
    room.settings = dataclasses.replace(
        settings,
        empty_timeout=config.empty_timeout or settings.empty_timeout,
        departure_timeout=config.departure_timeout or settings.departure_timeout,
        max_participants=config.max_participants or settings.max_participants,
    )
    room.metadata = config.metadata or room.metadata
    for agent in config.agents:
        room.add_agent_dispatch(agent.agent_name, agent.metadata, agent.attributes)


async def rtc_websocket(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    ws = web.WebSocketResponse(
        max_msg_size=ctx.config.limit.signal_message_size_limit,
        heartbeat=WS_HEARTBEAT_S,
        compress=True,
    )
    if not ws.can_prepare(request).ok:
        raise HttpError(404, "expected a WebSocket upgrade")
    connect = validate_connect(
        request.headers, request.query, ctx.config, single_pc_path=request.path == "/rtc/v1"
    )
    host = await _room_host(ctx, connect)
    if host is not None and host != ctx.router.node_id:
        return await relay_to_host(ctx.router.bus, ctx.router.node_id, host, request, ws)
    await serve_session(ctx, connect, LocalSocket(ws, request))
    return ws


async def _room_host(ctx: SignalingContext, connect: ConnectRequest) -> str | None:
    """The node for this join: here when the room is here, else as the cluster maps it (a
    new room gets a node from the selector)."""
    if ctx.rooms.get(connect.room_name) is not None:
        return ctx.router.node_id
    may_create = not connect.reconnect and (
        ctx.rooms.auto_create or connect.claims.video.room_create
    )
    try:
        return await ctx.router.room_host(connect.room_name, create=may_create)
    except RoutingError as exc:
        raise HttpError(503, f"no node can host the room: {exc}") from exc
    except STORE_ERRORS as exc:
        logger.warning("room placement failed: %s", exc)
        raise HttpError(503, "room placement is unavailable") from exc


async def run_relayed_session(
    ctx: SignalingContext, headers: CIMultiDict[str], query: MultiDict[str], socket: SignalSocket
) -> None:
    """A session another node relays here: validated again with the shared keys."""
    await serve_session(ctx, validate_connect(headers, query, ctx.config), socket)


async def serve_session(
    ctx: SignalingContext, connect: ConnectRequest, socket: SignalSocket
) -> None:
    """Admit the participant and run its session until it leaves."""
    room = _find_room(ctx, connect, create=not connect.reconnect)
    await socket.prepare()
    if connect.reconnect:
        await _resume_session(ctx, connect, socket, room)
        return
    if room is None:
        await _refuse_resume(socket)
        return
    participant_sid = new_id(PARTICIPANT_PREFIX)
    log = logging.LoggerAdapter(
        logger, {"room": room.name, "participant": connect.claims.identity, "pID": participant_sid}
    )
    async with _signal_sink(socket, log) as sink:
        participant = Participant(
            sid=participant_sid,
            params=_join_params(connect, ice_preference(room.name, connect.claims.identity)),
            room_name=room.name,
            sink=sink,
            listener=room,
            endpoint=await ctx.endpoints.acquire(),
        )
        refresh = partial(_refresh, ctx, connect.claims)
        session = SignalSession(socket, sink, room, participant, refresh)
        try:
            await room.join(participant, _join_response(ctx, participant))
            await _apply_join_request(session, connect)
            await session.run()
        except RoomFullError:
            await participant.close(models.DisconnectReason.JOIN_FAILURE, send_leave=True)


@asynccontextmanager
async def _signal_sink(
    socket: SignalSocket, log: logging.LoggerAdapter[logging.Logger]
) -> AsyncIterator[WebSocketSink]:
    """A sink on ``socket`` with its writer task, closed and drained when the block ends."""
    sink = WebSocketSink(socket, log)
    writer = asyncio.get_running_loop().create_task(sink.run_writer(), name="signal-writer")
    try:
        yield sink
    finally:
        sink.close()
        await writer


async def _resume_session(
    ctx: SignalingContext, connect: ConnectRequest, socket: SignalSocket, room: Room | None
) -> None:
    """``reconnect=1``: the same participant (matched by identity, as LiveKit does) carries
    on with this connection; one it no longer has must rejoin from scratch."""
    identity = connect.claims.identity
    participant = room.participants.get(identity) if room is not None else None
    if room is None or participant is None or participant.is_closed:
        await _refuse_resume(socket)
        return
    cut = take_resume_cut(room.name, identity)
    if cut is not None and cut.before_any_frame:
        await socket.close()  # simulate: disconnect_signal_on_resume_no_messages
        return
    async with _signal_sink(socket, participant.log) as sink:
        lost_at = participant.attach_signal(sink)
        refresh = partial(_refresh, ctx, connect.claims)
        session = SignalSession(socket, sink, room, participant, refresh)
        room.resume(participant, _reconnect_response(ctx, participant), lost_at)
        if cut is not None:  # simulate: disconnect_signal_on_resume, after the responses
            sink.close()
        await _apply_join_request(session, connect)
        await session.run()


async def _apply_join_request(session: SignalSession, connect: ConnectRequest) -> None:
    """Single PC: the tracks and the first offer a client put in its join request are handled
    after the join as if they had come as requests (LiveKit ``StartSession``)."""
    join = connect.join_request
    if join is None:
        return
    for add_track in join.add_track_requests:
        await session.dispatch(rtc.SignalRequest(add_track=add_track))
    if join.HasField("publisher_offer") and join.publisher_offer.sdp:
        await session.dispatch(rtc.SignalRequest(offer=join.publisher_offer))


def _reconnect_response(ctx: SignalingContext, participant: Participant) -> rtc.ReconnectResponse:
    join = _join_response_fields(ctx, participant)
    return rtc.ReconnectResponse(
        ice_servers=join.ice_servers,
        client_configuration=join.client_configuration,
        server_info=join.server_info,
    )


async def _refuse_resume(ws: SignalSocket) -> None:
    """A resume for a participant this node no longer has: tell the client to rejoin from
    scratch, as LiveKit does (STATE_MISMATCH + RECONNECT, as the first frame)."""
    leave = rtc.LeaveRequest(
        can_reconnect=True,
        reason=models.DisconnectReason.STATE_MISMATCH,
        action=rtc.LeaveRequest.Action.RECONNECT,
    )
    await ws.send_bytes(rtc.SignalResponse(leave=leave).SerializeToString())
    await ws.close()


def _join_params(connect: ConnectRequest, ice_preference: str = "") -> JoinParams:
    claims = connect.claims
    attributes = dict(claims.attributes)
    attributes.update(connect.attributes)
    return JoinParams(
        identity=claims.identity,
        grant=claims.video,
        name=claims.name,
        metadata=claims.metadata if connect.metadata is None else connect.metadata,
        attributes=attributes,
        kind=_KINDS.get(claims.kind.lower(), models.ParticipantInfo.Kind.STANDARD),
        protocol=connect.protocol,
        auto_subscribe=connect.auto_subscribe,
        adaptive_stream=connect.adaptive_stream,
        client_info=connect.client_info,
        single_pc=connect.single_pc,
        ice_preference=ice_preference,
    )


def _join_response(ctx: SignalingContext, participant: Participant) -> rtc.JoinResponse:
    """Everything of the JoinResponse but the room and participants (LiveKit
    ``room.go createJoinResponseLocked``)."""
    join = _join_response_fields(ctx, participant)
    join.subscriber_primary = participant.subscriber_primary
    # A single-PC client may publish before it has connected (LiveKit sets fast_publish for
    # a publisher when no ICE fallback applies).
    params = participant.params
    join.fast_publish = params.single_pc and participant.grant.can_publish
    join.fast_publish &= not params.ice_preference
    return join


def _join_response_fields(ctx: SignalingContext, participant: Participant) -> rtc.JoinResponse:
    """What a JoinResponse and a ReconnectResponse share."""
    config = ctx.config
    server_info = models.ServerInfo(
        edition=models.ServerInfo.Standard,
        version=LIVEKIT_COMPATIBLE_VERSION,
        protocol=SERVER_PROTOCOL,
        debug_info=f"livekit-py-server {ctx.version}",
        region=config.region,
        node_id=ctx.node_id,
    )
    servers, relay = ice_servers(
        config, participant.sid, participant.params.ice_preference, time.time()
    )
    client_configuration = models.ClientConfiguration()
    if relay:
        client_configuration.force_relay = models.ClientConfigSetting.ENABLED
    return rtc.JoinResponse(
        server_version=LIVEKIT_COMPATIBLE_VERSION,
        server_region=config.region,
        ice_servers=servers,
        client_configuration=client_configuration,
        ping_interval=PING_INTERVAL_S,
        ping_timeout=PING_TIMEOUT_S,
        server_info=server_info,
    )


def _refresh(ctx: SignalingContext, claims: Claims, room_name: str) -> str:
    # LiveKit re-issues with the first configured key pair (`roommanager.go refreshToken`);
    # a participant moved to another room gets that room in its grant.
    api_key, secret = next(iter(ctx.config.keys.items()))
    if room_name != claims.video.room:
        claims = dataclasses.replace(
            claims, video=dataclasses.replace(claims.video, room=room_name)
        )
    return refresh_token(claims, api_key=api_key, secret=secret)


async def _place_room(ctx: SignalingContext, name: str) -> str | None:
    """The node of room ``name`` for a participant moved or forwarded there: None when it is
    this one (the room is made here when it does not exist anywhere yet)."""
    router = ctx.router
    host = await router.room_host(name, create=True, preferred=router.node_id)
    if host != router.node_id:
        return host
    ctx.rooms.get_or_create(name, may_create=True)
    if ctx.publish_room is not None:
        await ctx.publish_room(name)
    return None


def add_routes(app: web.Application, ctx: SignalingContext) -> None:
    app[CONTEXT] = ctx
    app.middlewares.append(cors_and_errors)
    app.router.add_get("/", health)
    app.router.add_get("/rtc", rtc_websocket)
    app.router.add_get("/rtc/validate", validate)
    app.router.add_get("/rtc/v1", rtc_websocket)
    app.router.add_get("/rtc/v1/validate", validate)
    twirp = TwirpServer(ctx.config, stats=ctx.twirp_stats)
    store = ctx.router.store
    service = RoomService(ctx.rooms, ctx.config, store.list_rooms, ctx.publish_room)
    limit = ctx.config.limit.max_room_name_length
    forwards = ForwardCluster(
        ctx.router,
        ctx.rooms,
        media_bind_address(ctx.config.bind_addresses),
        ctx.router.node.ip,
    )
    app[FORWARDS] = forwards
    moves = ParticipantMoves(ctx.rooms, partial(_place_room, ctx), limit, forwards.forward)
    more = {
        "MoveParticipant": twirp_handler(moves.move_participant),
        "ForwardParticipant": twirp_handler(moves.forward_participant),
    }
    twirp.add(service.twirp(more))
    launch = ctx.agents.dispatch_now if ctx.agents is not None else None
    twirp.add(AgentDispatchService(ctx.rooms, launch).twirp())
    for absent in absent_services():
        twirp.add(absent)
    forwarder = ApiForwarder(ctx.router, ctx.rooms, twirp)
    twirp.forward = forwarder
    app[FORWARDER] = forwarder
    if ctx.agents is not None:
        cluster = AgentCluster(ctx.router, ctx.agents)
        ctx.agents.cluster = cluster
        forwarder.internal[AGENTS_SERVICE] = cluster.serve
    forwarder.internal[FORWARDS_SERVICE] = forwards.serve

    async def close_forwards(app: web.Application) -> None:
        await forwards.close()

    app.on_cleanup.append(close_forwards)
    add_twirp_routes(app, twirp)
