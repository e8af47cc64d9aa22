"""This node's place in the cluster: registration, liveness, room placement and RPC.

LiveKit ``routing/redisrouter.go`` and ``service/roomallocator.go``: a node registers itself
in ``nodes`` and refreshes its stats every 2 s; a room is hosted by the node
``room_node_map`` names, chosen by the node selector when the room is new; nodes whose stats
stopped are removed with their rooms, so clients that reconnect land on a live node. With the
in-memory store and bus (one node, nothing configured) the same code runs with one member.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace

from config.schema import NodeSelectorConfig
from routing.bus import BusClosedError, MessageBus, Subscription
from routing.node import (
    STATS_INTERVAL_S,
    NodeInfo,
    NodeState,
    NodeStats,
    NoNodeError,
    select_node,
)
from routing.relay import rpc_channel
from routing.store import STORE_ERRORS, RoomStore

logger = logging.getLogger(__name__)

#: Nodes silent for longer are dead: their entries and rooms are removed (the issue asks for
#: detection within 10 s; stats come every 2 s).
DEAD_AFTER_S = 6.0
RPC_TIMEOUT_S = 5.0
STATS_FRESH_S = 4.0


class RoutingError(Exception):
    """A room could not be placed or a node could not be reached."""


@dataclass(frozen=True)
class RpcRequest:
    """An API call for the node hosting its room (a Twirp request, re-checked there)."""

    reply_to: str
    service: str
    method: str
    authorization: str
    body: bytes
    """The request message, protobuf."""

    def encode(self) -> bytes:
        obj = {
            "reply_to": self.reply_to,
            "service": self.service,
            "method": self.method,
            "authorization": self.authorization,
            "body": base64.b64encode(self.body).decode(),
        }
        return json.dumps(obj).encode()

    @classmethod
    def decode(cls, data: bytes) -> RpcRequest:
        obj = json.loads(data)
        try:
            return cls(
                reply_to=str(obj["reply_to"]),
                service=str(obj["service"]),
                method=str(obj["method"]),
                authorization=str(obj["authorization"]),
                body=base64.b64decode(obj["body"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad rpc request: {exc}") from None


@dataclass(frozen=True)
class RpcResponse:
    """HTTP status and body of the host's answer (protobuf, or a Twirp error's JSON)."""

    status: int
    body: bytes

    def encode(self) -> bytes:
        return json.dumps(
            {"status": self.status, "body": base64.b64encode(self.body).decode()}
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> RpcResponse:
        obj = json.loads(data)
        try:
            return cls(status=int(obj["status"]), body=base64.b64decode(obj["body"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad rpc response: {exc}") from None


RpcHandler = Callable[[RpcRequest], Awaitable[RpcResponse]]
StatsSource = Callable[[], NodeStats]


class Router:
    """Placement and liveness for this node.

    :param node: this node's entry (id, advertised IP, region, CPUs).
    :param stats: called every refresh for this node's current stats.
    :param on_dead_room: told of each room removed because its node died.
    """

    def __init__(
        self,
        node: NodeInfo,
        store: RoomStore,
        bus: MessageBus,
        selector: NodeSelectorConfig,
        stats: StatsSource,
    ) -> None:
        self.node = node
        self.store = store
        self.bus = bus
        self.selector = selector
        self._stats = stats
        self._tasks: list[asyncio.Task[None]] = []
        self._rpc_inbox: Subscription | None = None
        self._rpc_handler: RpcHandler | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self.registered = False
        self.registered_at = 0.0
        """Monotonic time this node's entry was last written (the health check reads it)."""

    @property
    def node_id(self) -> str:
        return self.node.id

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, rpc_handler: RpcHandler) -> None:
        self._rpc_handler = rpc_handler
        self._rpc_inbox = await self.bus.subscribe(rpc_channel(self.node_id))
        self.set_state(NodeState.SERVING)
        await self._register()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._refresh_loop(), name="node-refresh"),
            loop.create_task(self._serve_rpc(self._rpc_inbox), name="node-rpc"),
        ]

    def healthy(self, now: float) -> bool:
        """LiveKit's health check: 200 while the node's stats are fresh, 406 once they are
        older than 4 s (the store is unreachable, so other nodes will soon drop this one)."""
        return now - self.registered_at <= STATS_FRESH_S

    def set_state(self, state: NodeState) -> None:
        if state is not self.node.state:
            logger.info("node %s: %s -> %s", self.node_id, self.node.state, state)
            self.node = replace(self.node, state=state)

    async def drain(self) -> None:
        """SHUTTING_DOWN: no new rooms come here; existing rooms keep accepting joins."""
        self.set_state(NodeState.SHUTTING_DOWN)
        await self._register()

    async def stop(self) -> None:
        for task in [*self._tasks, *self._calls]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._calls, return_exceptions=True)
        if self._rpc_inbox is not None:
            await self._rpc_inbox.close()
        try:
            await self.store.delete_node(self.node_id)
        except STORE_ERRORS as exc:
            logger.warning("could not unregister node %s: %s", self.node_id, exc)

    async def _register(self) -> None:
        self.node = self.node.with_stats(self._stats())
        await self.store.store_node(self.node)
        if not self.registered:
            logger.info("node %s registered (%s)", self.node_id, self.node.state)
        self.registered = True
        self.registered_at = time.monotonic()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            try:
                await self._register()
                await self._remove_dead_nodes()
            except STORE_ERRORS as exc:
                # Redis is away: rooms here keep running; we re-register when it returns.
                if self.registered:
                    logger.warning("node %s lost the store: %s", self.node_id, exc)
                self.registered = False

    async def _remove_dead_nodes(self) -> None:
        now = time.time()
        for node in await self.store.list_nodes():
            if node.id != self.node_id and now - node.stats.updated_at > DEAD_AFTER_S:
                logger.warning("node %s is gone; removing it and its rooms", node.id)
                await self.store.delete_node(node.id)
                for room in await self.store.list_rooms():
                    if await self.store.room_node(room.name) == node.id:
                        await self.store.delete_room(room.name, node.id)

    # --- placement -------------------------------------------------------------------------

    async def room_host(self, room_name: str, *, create: bool, preferred: str = "") -> str | None:
        """The node hosting ``room_name``; with ``create``, one is chosen for a new room:
        ``preferred`` (CreateRoom's ``node_id``) when it is alive and serving, else the
        selector's choice.

        A mapping to a dead node is dropped (its rooms are gone with it). Raises
        RoutingError when no node can take a new room.
        """
        mapped = await self.store.room_node(room_name)
        if mapped is not None:
            if mapped == self.node_id or await self._alive(mapped):
                return mapped
            await self.store.delete_room(room_name, mapped)
        if not create:
            return None
        async with self.store.lock_room(room_name):
            mapped = await self.store.room_node(room_name)
            if mapped is not None:
                return mapped
            nodes = await self.store.list_nodes()
            wanted = [n for n in nodes if n.id == preferred] if preferred else []
            if wanted and wanted[0].alive(time.time()) and wanted[0].state is NodeState.SERVING:
                return await self.store.claim_room(room_name, preferred)
            try:
                chosen = select_node(
                    nodes, self.selector, now=time.time(), current_region=self.node.region
                )
            except NoNodeError as exc:
                raise RoutingError(str(exc)) from exc
            return await self.store.claim_room(room_name, chosen.id)

    async def others_serving(self, *, excluding: Collection[str] = ()) -> bool:
        """Whether another live node, not one of ``excluding``, takes new rooms (a draining
        node can hand its rooms over)."""
        now = time.time()
        return any(
            n.id != self.node_id
            and n.id not in excluding
            and n.alive(now)
            and n.state is NodeState.SERVING
            for n in await self.store.list_nodes()
        )

    async def live_peers(self) -> list[str]:
        """The other nodes that are alive."""
        now = time.time()
        return [
            n.id for n in await self.store.list_nodes() if n.id != self.node_id and n.alive(now)
        ]

    async def _alive(self, node_id: str) -> bool:
        now = time.time()
        return any(n.id == node_id and n.alive(now) for n in await self.store.list_nodes())

    # --- RPC -------------------------------------------------------------------------------

    async def call(
        self, node_id: str, request: RpcRequest, timeout_s: float = RPC_TIMEOUT_S
    ) -> RpcResponse:
        """Run ``request`` on ``node_id`` and wait for its answer."""
        inbox = await self.bus.subscribe(request.reply_to)
        try:
            await self.bus.publish(rpc_channel(node_id), request.encode())
            async with asyncio.timeout(timeout_s):
                data = await inbox.get()
            return RpcResponse.decode(data)
        except (TimeoutError, BusClosedError):
            raise RoutingError(f"node {node_id} did not answer") from None
        finally:
            await inbox.close()

    def reply_channel(self) -> str:
        return f"rpc-reply:{self.node_id}:{secrets.token_hex(8)}"

    async def _serve_rpc(self, inbox: Subscription) -> None:
        async for data in inbox:
            try:
                request = RpcRequest.decode(data)
            except ValueError as exc:
                logger.warning("x rpc request dropped: %s", exc)
                continue
            task = asyncio.get_running_loop().create_task(
                self._answer(request), name="node-rpc-call"
            )
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _answer(self, request: RpcRequest) -> None:
        assert self._rpc_handler is not None
        try:
            response = await self._rpc_handler(request)
        except Exception:
            logger.exception("rpc %s/%s failed", request.service, request.method)
            response = RpcResponse(500, b'{"code":"internal","msg":"internal error"}')
        try:
            await self.bus.publish(request.reply_to, response.encode())
        except Exception as exc:
            logger.warning("rpc reply lost: %s", exc)
