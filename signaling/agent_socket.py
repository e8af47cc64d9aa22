"""The ``/agent`` WebSocket: an agent worker's connection (LiveKit ``service/agentservice.go``).

A token with the ``agent`` grant only (no room) opens it; its API key signs the worker's job
tokens. The worker's first message must be ``register`` within :data:`REGISTER_TIMEOUT_S`
(``ping`` is answered meanwhile); the answer is ``register`` with the worker's id and server
info. After that: offers answered (``availability``), status and load (``update_worker``), job
progress (``update_job``), ``ping``. Messages are protobuf in binary frames or protojson in text
frames, and each reply takes the framing of the last frame received, as in LiveKit.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import WSMsgType, web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from livekit.protocol import agent, models

from protocol.ids import new_id
from signaling.agents import AgentService, Worker
from signaling.auth import HttpError, authenticate
from signaling.http import CONTEXT, LIVEKIT_COMPATIBLE_VERSION, SERVER_PROTOCOL

logger = logging.getLogger(__name__)

AGENTS = web.AppKey("agent_service", AgentService)
#: LiveKit's ``RegisterTimeout``.
REGISTER_TIMEOUT_S = 10.0
#: LiveKit pings workers every 10 s.
PING_INTERVAL_S = 10.0
#: ``limit.agent_signal_message_size_limit``'s default.
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
#: The agent protocol version LiveKit reports.
AGENT_PROTOCOL = 1
#: The default permissions of an agent participant (LiveKit, when the worker names none).
DEFAULT_PERMISSIONS = models.ParticipantPermission(
    can_subscribe=True, can_publish=True, can_publish_data=True, can_update_metadata=True
)


class WorkerSocket:
    """Reads and writes one worker's messages in the framing it last used."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.binary = True

    async def send(self, message: agent.ServerMessage) -> None:
        if self.binary:
            await self.ws.send_bytes(message.SerializeToString())
        else:
            await self.ws.send_str(json_format.MessageToJson(message))

    async def receive(self) -> agent.WorkerMessage | None:
        """The next message; None when the socket closed. ValueError for one that does not
        parse."""
        frame = await self.ws.receive()
        message = agent.WorkerMessage()
        try:
            if frame.type == WSMsgType.BINARY:
                self.binary = True
                message.ParseFromString(frame.data)
            elif frame.type == WSMsgType.TEXT:
                self.binary = False
                json_format.Parse(frame.data, message, ignore_unknown_fields=True)
            else:
                return None
        except (DecodeError, json_format.ParseError) as exc:
            raise ValueError(f"unreadable worker message: {exc}") from None
        return message


async def agent_websocket(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise web.HTTPNotFound()
    try:
        claims = authenticate(request.headers, request.query, ctx.config)
    except HttpError as exc:
        return web.Response(status=exc.status, text=exc.reason)
    if not claims.video.agent:
        return web.Response(status=401, text="permission denied")
    ws = web.WebSocketResponse(heartbeat=PING_INTERVAL_S, max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    socket = WorkerSocket(ws)
    try:
        register = await asyncio.wait_for(_registration(socket), REGISTER_TIMEOUT_S)
    except (TimeoutError, ValueError) as exc:
        logger.info("agent worker refused: %s", exc or "no register in time")
        await ws.close()
        return ws
    if register is None:
        return ws
    service = request.app[AGENTS]
    worker = Worker(
        id=new_id("AW_"),
        agent_name=register.agent_name,
        job_type=register.type,
        namespace=register.namespace,
        api_key=claims.api_key,
        api_secret=ctx.config.keys[claims.api_key],
        permissions=register.allowed_permissions
        if register.HasField("allowed_permissions")
        else DEFAULT_PERMISSIONS,
        send=socket.send,
    )
    info = models.ServerInfo(
        edition=models.ServerInfo.Standard,
        version=LIVEKIT_COMPATIBLE_VERSION,
        protocol=SERVER_PROTOCOL,
        agent_protocol=AGENT_PROTOCOL,
        region=ctx.config.region,
        node_id=ctx.node_id,
    )
    response = agent.RegisterWorkerResponse(worker_id=worker.id, server_info=info)
    await socket.send(agent.ServerMessage(register=response))
    service.add(worker)
    try:
        await _serve(socket, service, worker)
    except ValueError as exc:
        logger.info("agent worker %s closed: %s", worker.id, exc)
    finally:
        service.remove(worker)
        await ws.close()
    return ws


async def _registration(socket: WorkerSocket) -> agent.RegisterWorkerRequest | None:
    """Wait for ``register``, answering pings; anything else is an error (LiveKit
    ``HandshakeAgentWorker``)."""
    while True:
        message = await socket.receive()
        if message is None:
            return None
        match message.WhichOneof("message"):
            case "register":
                return _checked(message.register)
            case "ping":
                await socket.send(_pong(message.ping))
            case other:
                raise ValueError(f"{other} before register")


def _checked(register: agent.RegisterWorkerRequest) -> agent.RegisterWorkerRequest:
    if register.type not in agent.JobType.values():
        raise ValueError(f"unknown job type {register.type}")
    deployment = register.deployment
    if len(deployment) > 64 or any(c == "_" or c.isspace() or ord(c) < 32 for c in deployment):
        raise ValueError("invalid deployment")
    return register


async def _serve(socket: WorkerSocket, service: AgentService, worker: Worker) -> None:
    """One flat dispatch on the message's oneof until the worker goes."""
    while (message := await socket.receive()) is not None:
        match message.WhichOneof("message"):
            case "availability":
                service.on_availability(worker, message.availability)
            case "update_worker":
                update = message.update_worker
                if update.HasField("status"):
                    worker.status = update.status
                worker.load = update.load
            case "update_job":
                service.on_job_update(worker, message.update_job)
            case "ping":
                await socket.send(_pong(message.ping))
            case "migrate_job" | "simulate_job" | "register":
                # LiveKit's open-source server ignores migrations; simulated jobs are the
                # client's own (livekit-agents never sends them); one register is enough.
                logger.debug("worker %s: %s ignored", worker.id, message.WhichOneof("message"))
            case other:
                raise ValueError(f"unknown message {other}")


def _pong(ping: agent.WorkerPing) -> agent.ServerMessage:
    now_ms = int(time.time() * 1000)
    return agent.ServerMessage(
        pong=agent.WorkerPong(last_timestamp=ping.timestamp, timestamp=now_ms)
    )


def add_agent_routes(app: web.Application, service: AgentService) -> None:
    app[AGENTS] = service
    app.router.add_get("/agent", agent_websocket)
