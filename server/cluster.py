"""The cluster parts of a node, chosen once at start-up (LiveKit ``service/wire.go``).

No ``redis`` section and one worker: an in-memory store and bus, this node its only member.
``redis.address`` (or sentinels): the Redis store and bus. ``--workers N`` without Redis: the
redis-server the supervisor started on a Unix socket (``server/local_redis.py``). Either way
the same router, relay and store sync run, so a single node is a cluster of one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from config import Config
from config.network import host_port
from config.schema import RedisConfig
from protocol.ids import node_id_for_host
from routing.bus import LocalBus, MessageBus, RedisBus
from routing.node import STATS_INTERVAL_S, NodeInfo, NodeStats
from routing.router import Router
from routing.store import STORE_ERRORS, LocalStore, RedisStore, RoomStore
from sfu.events import RoomEvent
from sfu.rooms import RoomManager

logger = logging.getLogger(__name__)


#: Fail fast while Redis is away (one retry, short timeouts): callers have their own retry
#: loops, and shutdown must not hang on a store that is gone.
CLIENT_OPTIONS: dict[str, Any] = {
    "socket_timeout": 5.0,
    "socket_connect_timeout": 2.0,
    "retry": Retry(NoBackoff(), 1),
    "health_check_interval": 10,
}


class ClusterConfigError(Exception):
    """The Redis configuration cannot be used."""


@dataclass(frozen=True)
class WorkerIdentity:
    """Which worker of ``--workers`` this process is; index 0 and no Redis socket when alone."""

    index: int = 0
    count: int = 1
    redis_socket: str = ""
    """The supervisor's redis-server socket (workers without a configured Redis)."""


@dataclass
class Backends:
    store: RoomStore
    bus: MessageBus
    client: Redis | None = None

    async def close(self) -> None:
        await self.bus.close()
        if self.client is not None:
            await self.client.aclose()


def open_backends(config: Config, worker: WorkerIdentity) -> Backends:
    """Clients only; nothing connects until first use, so start-up never waits for Redis."""
    if config.redis.enabled:
        client = redis_client(config.redis)
    elif worker.redis_socket:
        client = Redis(unix_socket_path=worker.redis_socket, **CLIENT_OPTIONS)
    else:
        return Backends(LocalStore(), LocalBus())
    return Backends(RedisStore(client), RedisBus(client), client)


def redis_client(redis: RedisConfig) -> Redis:
    if redis.cluster_addresses:
        raise ClusterConfigError(
            "redis.cluster_addresses: Redis Cluster is not supported yet; use redis.address "
            "or sentinels"
        )
    username = redis.username or None
    password = redis.password or None
    if redis.sentinel_addresses:
        sentinel = Sentinel(
            [_host_port(a) for a in redis.sentinel_addresses],
            sentinel_kwargs={
                "username": redis.sentinel_username or None,
                "password": redis.sentinel_password or None,
            },
            username=username,
            password=password,
            db=redis.db,
            ssl=redis.use_tls,
            **CLIENT_OPTIONS,
        )
        master: Redis = sentinel.master_for(redis.sentinel_master_name)
        return master
    host, port = _host_port(redis.address)
    return Redis(
        host=host,
        port=port,
        username=username,
        password=password,
        db=redis.db,
        ssl=redis.use_tls,
        **CLIENT_OPTIONS,
    )


def _host_port(address: str) -> tuple[str, int]:
    try:
        return host_port(address)
    except ValueError as exc:
        raise ClusterConfigError(f"redis address {exc}") from None


def local_node(config: Config, worker: WorkerIdentity, advertised_ip: str) -> NodeInfo:
    """This node's entry. Its id is LiveKit's hashed host name, with the port and the
    worker index mixed in so several nodes on one machine stay apart."""
    name = socket.gethostname()
    if worker.count > 1 or config.redis.enabled:
        name = f"{name}:{config.port}:{worker.index}"
    return NodeInfo(
        id=node_id_for_host(name),
        ip=advertised_ip,
        num_cpus=os.cpu_count() or 1,
        region=config.region,
    )


def sibling_node_ids(config: Config, worker: WorkerIdentity) -> frozenset[str]:
    """The ids of the other workers of this supervisor: they get the same SIGTERM, so a
    draining worker never hands its rooms to them."""
    if worker.count <= 1:
        return frozenset()
    name = socket.gethostname()
    return frozenset(
        node_id_for_host(f"{name}:{config.port}:{index}")
        for index in range(worker.count)
        if index != worker.index
    )


class NodeLoad:
    """Stats for the node entry, from the rooms and the process's CPU time."""

    def __init__(self, rooms: RoomManager) -> None:
        self._rooms = rooms
        self._last = (time.monotonic(), time.process_time())

    def __call__(self) -> NodeStats:
        now, cpu = time.monotonic(), time.process_time()
        last_now, last_cpu = self._last
        self._last = (now, cpu)
        rooms = list(self._rooms.rooms.values())
        clients = sum(len(r.participants) for r in rooms)
        tracks_in = sum(len(p.tracks.published) for r in rooms for p in r.participants.values())
        tracks_out = sum(len(p.tracks.downtracks) for r in rooms for p in r.participants.values())
        return NodeStats(
            updated_at=time.time(),
            num_rooms=len(rooms),
            num_clients=clients,
            num_tracks_in=tracks_in,
            num_tracks_out=tracks_out,
            load_avg_last1min=os.getloadavg()[0],
            cpu_load=min(1.0, (cpu - last_cpu) / max(now - last_now, 1e-3)),
        )


class StoreSync:
    """Keeps this node's rooms and participants in the store (LiveKit writes them on every
    change). Lifecycle events write at once; every 2 s all of them are written again, which
    also rebuilds the store after Redis was away."""

    def __init__(self, rooms: RoomManager, router: Router) -> None:
        self._rooms = rooms
        self._router = router
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def publish(self, name: str) -> None:
        """Write one room now (or remove it from the store when it is gone)."""
        await self._write(name)

    def on_room_event(self, event: RoomEvent) -> None:
        self._dirty.add(event.room.name)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="store-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for name in list(self._rooms.rooms):
            await self._forget(name)

    async def _run(self) -> None:
        next_full = 0.0
        while True:
            try:
                # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancel that
                # races with the event, and stop() would wait forever.
                async with asyncio.timeout(STATS_INTERVAL_S):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                if time.monotonic() >= next_full:
                    next_full = time.monotonic() + STATS_INTERVAL_S
                    await self._write_all()
                dirty, self._dirty = self._dirty, set()
                for name in dirty:
                    await self._write(name)
            except STORE_ERRORS as exc:  # the next round retries
                logger.debug("store sync failed: %s", exc)
                next_full = 0.0

    async def _write_all(self) -> None:
        for name in list(self._rooms.rooms):
            await self._write(name)
        # Mappings to us for rooms we do not host (a join that failed after placement).
        for name, node_id in (await self._router.store.room_nodes()).items():
            if node_id == self._router.node_id and self._rooms.get(name) is None:
                await self._forget(name)

    async def _write(self, name: str) -> None:
        room = self._rooms.get(name)
        if room is None:
            await self._forget(name)
            return
        store = self._router.store
        await store.store_room(room.to_proto(), self._router.node_id)
        infos = [p.to_info() for p in room.participants.values() if not p.is_closed]
        await store.replace_participants(name, infos)

    async def _forget(self, name: str) -> None:
        try:
            await self._router.store.delete_room(name, self._router.node_id)
        except STORE_ERRORS as exc:
            logger.debug("could not remove room %s from the store: %s", name, exc)
