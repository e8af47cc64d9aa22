"""Room state shared by the nodes: rooms, their participants, which node hosts each room, and
the nodes themselves (LiveKit ``service/localstore.go`` and ``redisstore.go``).

Keys and value encodings are LiveKit's (``rooms``, ``room_participants:<room>``,
``room_node_map``, ``nodes``, ``room_lock:<room>``; rooms and participants as protobuf), except
node entries, which are JSON (see ``routing/node.py``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Protocol, TypeVar

from livekit.protocol import models
from redis.asyncio import Redis
from redis.exceptions import RedisError

from routing.node import NodeInfo

logger = logging.getLogger(__name__)

ROOMS_KEY = "rooms"
ROOM_NODE_MAP_KEY = "room_node_map"
NODES_KEY = "nodes"
PARTICIPANTS_PREFIX = "room_participants:"
LOCK_PREFIX = "room_lock:"
#: LiveKit's room lock: 5 s TTL, retried every 100 ms (``redisstore.go LockRoom``).
LOCK_TTL_MS = 5000
LOCK_RETRY_S = 0.1
_RELEASE_LOCK = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
else
    return 0
end
"""


class LockTimeoutError(Exception):
    """Another node held the room lock for longer than we wait."""


#: What a store call raises when Redis (or the workers' redis-server) is away or slow: callers that
#: keep rooms running through an outage catch exactly these.
STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, LockTimeoutError)


class RoomStore(Protocol):
    async def store_room(self, room: models.Room, node_id: str) -> None: ...
    async def delete_room(self, name: str, node_id: str) -> None: ...
    async def list_rooms(self, names: Iterable[str] = ()) -> list[models.Room]: ...
    async def room_node(self, name: str) -> str | None: ...
    async def claim_room(self, name: str, node_id: str) -> str: ...
    async def room_nodes(self) -> dict[str, str]: ...
    async def store_participant(self, room: str, info: models.ParticipantInfo) -> None: ...
    async def replace_participants(
        self, room: str, infos: Iterable[models.ParticipantInfo]
    ) -> None: ...
    async def delete_participant(self, room: str, identity: str) -> None: ...
    async def list_participants(self, room: str) -> list[models.ParticipantInfo]: ...
    async def store_node(self, node: NodeInfo) -> None: ...
    async def delete_node(self, node_id: str) -> None: ...
    async def list_nodes(self) -> list[NodeInfo]: ...
    def lock_room(self, name: str) -> AbstractAsyncContextManager[None]: ...


class LocalStore:
    """The single-node store: everything in this process."""

    def __init__(self) -> None:
        self.rooms: dict[str, models.Room] = {}
        self.room_nodes_map: dict[str, str] = {}
        self.participants: dict[str, dict[str, models.ParticipantInfo]] = {}
        self.nodes: dict[str, NodeInfo] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def store_room(self, room: models.Room, node_id: str) -> None:
        self.rooms[room.name] = room
        self.room_nodes_map[room.name] = node_id

    async def delete_room(self, name: str, node_id: str) -> None:
        if self.room_nodes_map.get(name, node_id) == node_id:
            self.rooms.pop(name, None)
            self.room_nodes_map.pop(name, None)
            self.participants.pop(name, None)

    async def list_rooms(self, names: Iterable[str] = ()) -> list[models.Room]:
        wanted = set(names)
        return [r for n, r in self.rooms.items() if not wanted or n in wanted]

    async def room_node(self, name: str) -> str | None:
        return self.room_nodes_map.get(name)

    async def claim_room(self, name: str, node_id: str) -> str:
        return self.room_nodes_map.setdefault(name, node_id)

    async def room_nodes(self) -> dict[str, str]:
        return dict(self.room_nodes_map)

    async def replace_participants(
        self, room: str, infos: Iterable[models.ParticipantInfo]
    ) -> None:
        self.participants[room] = {info.identity: info for info in infos}

    async def store_participant(self, room: str, info: models.ParticipantInfo) -> None:
        self.participants.setdefault(room, {})[info.identity] = info

    async def delete_participant(self, room: str, identity: str) -> None:
        self.participants.get(room, {}).pop(identity, None)

    async def list_participants(self, room: str) -> list[models.ParticipantInfo]:
        return list(self.participants.get(room, {}).values())

    async def store_node(self, node: NodeInfo) -> None:
        self.nodes[node.id] = node

    async def delete_node(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)

    async def list_nodes(self) -> list[NodeInfo]:
        return list(self.nodes.values())

    def lock_room(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())


class RedisStore:
    """The shared store in Redis (or the redis-server of ``--workers``)."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self._release = client.register_script(_RELEASE_LOCK)

    async def store_room(self, room: models.Room, node_id: str) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(ROOMS_KEY, room.name, room.SerializeToString())
            pipe.hset(ROOM_NODE_MAP_KEY, room.name, node_id)
            await pipe.execute()

    async def delete_room(self, name: str, node_id: str) -> None:
        """Forget a room, unless another node has taken it over meanwhile."""
        owner = await self.room_node(name)
        if owner not in (None, node_id):
            return
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hdel(ROOMS_KEY, name)
            pipe.hdel(ROOM_NODE_MAP_KEY, name)
            pipe.delete(PARTICIPANTS_PREFIX + name)
            await pipe.execute()

    async def list_rooms(self, names: Iterable[str] = ()) -> list[models.Room]:
        wanted = list(names)
        if wanted:
            values = await self.client.hmget(ROOMS_KEY, wanted)
        else:
            values = list((await self.client.hgetall(ROOMS_KEY)).values())
        return [_parse(models.Room, v) for v in values if v is not None]

    async def room_node(self, name: str) -> str | None:
        value = await self.client.hget(ROOM_NODE_MAP_KEY, name)
        return _text(value) if value is not None else None

    async def claim_room(self, name: str, node_id: str) -> str:
        """Map ``name`` to ``node_id`` unless it is mapped already; the mapped node."""
        if await self.client.hsetnx(ROOM_NODE_MAP_KEY, name, node_id):
            return node_id
        owner = await self.room_node(name)
        return owner if owner is not None else node_id

    async def room_nodes(self) -> dict[str, str]:
        mapping = await self.client.hgetall(ROOM_NODE_MAP_KEY)
        return {_text(k): _text(v) for k, v in mapping.items()}

    async def store_participant(self, room: str, info: models.ParticipantInfo) -> None:
        await self.client.hset(PARTICIPANTS_PREFIX + room, info.identity, info.SerializeToString())

    async def replace_participants(
        self, room: str, infos: Iterable[models.ParticipantInfo]
    ) -> None:
        key = PARTICIPANTS_PREFIX + room
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.delete(key)
            for info in infos:
                pipe.hset(key, info.identity, info.SerializeToString())
            await pipe.execute()

    async def delete_participant(self, room: str, identity: str) -> None:
        await self.client.hdel(PARTICIPANTS_PREFIX + room, identity)

    async def list_participants(self, room: str) -> list[models.ParticipantInfo]:
        values = (await self.client.hgetall(PARTICIPANTS_PREFIX + room)).values()
        return [_parse(models.ParticipantInfo, v) for v in values]

    async def store_node(self, node: NodeInfo) -> None:
        await self.client.hset(NODES_KEY, node.id, node.to_json())

    async def delete_node(self, node_id: str) -> None:
        await self.client.hdel(NODES_KEY, node_id)

    async def list_nodes(self) -> list[NodeInfo]:
        nodes = []
        for node_id, value in (await self.client.hgetall(NODES_KEY)).items():
            try:
                nodes.append(NodeInfo.from_json(value))
            except ValueError as exc:
                logger.warning("ignoring node entry %r: %s", node_id, exc)
        return nodes

    def lock_room(self, name: str) -> _RedisLock:
        return _RedisLock(self, LOCK_PREFIX + name)


class _RedisLock:
    def __init__(self, store: RedisStore, key: str) -> None:
        self._store = store
        self._key = key
        self._token = ""

    async def __aenter__(self) -> None:
        token = "LOCK_" + secrets.token_hex(8)
        for _ in range(int(LOCK_TTL_MS / 1000 / LOCK_RETRY_S) + 1):
            if await self._store.client.set(self._key, token, nx=True, px=LOCK_TTL_MS):
                self._token = token
                return
            await asyncio.sleep(LOCK_RETRY_S)
        raise LockTimeoutError(f"could not lock {self._key}")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._store._release(keys=[self._key], args=[self._token])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_Message = TypeVar("_Message", models.Room, models.ParticipantInfo)


def _parse(cls: type[_Message], value: bytes | str) -> _Message:
    message = cls()
    message.ParseFromString(value if isinstance(value, bytes) else value.encode())
    return message


@asynccontextmanager
async def redis_client(url_or_path: str) -> AsyncIterator[Redis]:
    """A client for a ``redis://`` URL or a Unix socket path."""
    if url_or_path.startswith(("redis://", "rediss://", "unix://")):
        client = Redis.from_url(url_or_path)
    else:
        client = Redis(unix_socket_path=url_or_path)
    try:
        yield client
    finally:
        await client.aclose()
