"""Several nodes sharing a real Redis: participants on different nodes meet in one room."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from livekit import api, rtc
from livekit.protocol import rtc as proto
from redis.asyncio import Redis

from tests.e2e.harness import API_KEY, API_SECRET, ServerProcess, make_token
from tests.e2e.raw import join_request_param
from tests.e2e.redis_server import RedisProcess
from tests.e2e.sdk import EventLog, connect, joined, wait_until
from tests.e2e.test_media import SAMPLE_RATE, TONE_HZ, dominant_frequency, hear, publishing_tone

pytestmark = pytest.mark.sdk


@asynccontextmanager
async def server_api(node: ServerProcess) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(node.http_url, API_KEY, API_SECRET)
    try:
        yield client
    finally:
        await client.aclose()


async def room_node_of(redis: RedisProcess, room: str) -> str | None:
    client = Redis(host="127.0.0.1", port=redis.port)
    try:
        value = await client.hget("room_node_map", room)
        return value.decode() if value else None
    finally:
        await client.aclose()


async def test_participants_on_different_nodes_meet(
    nodes: Callable[..., ServerProcess], redis: RedisProcess
) -> None:
    first, second = nodes(), nodes()
    async with (
        joined(first, "alice", "cluster-meet") as alice,
        joined(second, "bob", "cluster-meet", can_update_own_metadata=True) as bob,
    ):
        await wait_until(lambda: "alice" in bob.remote_participants)
        await wait_until(lambda: "bob" in alice.remote_participants)
        host = await room_node_of(redis, "cluster-meet")
        assert host is not None and host.startswith("ND_")
        # Data both ways.
        got = EventLog(bob, "data_received")
        await alice.local_participant.publish_data(b"across nodes", topic="x")
        packet = await got.wait_for(lambda p: p.data == b"across nodes")
        assert packet.participant.identity == "alice"
        # Metadata.
        changed = EventLog(alice, "participant_metadata_changed")
        await bob.local_participant.set_metadata("bob's metadata")
        await changed.wait_for(lambda e: e[2] == "bob's metadata")
        # Media: alice's tone reaches bob.
        subscribed = EventLog(bob, "track_subscribed")
        async with publishing_tone(alice):
            track, _, _ = await subscribed.wait_for()
            tail = (await hear(track, 1.0))[SAMPLE_RATE // 2 :]
            assert abs(dominant_frequency(tail, SAMPLE_RATE) - TONE_HZ) < 15


async def test_room_service_calls_reach_the_hosting_node(
    nodes: Callable[..., ServerProcess],
) -> None:
    first, second = nodes(), nodes()
    async with joined(first, "member", "cluster-api") as member:
        metadata = EventLog(member, "room_metadata_changed")
        data = EventLog(member, "data_received")
        for node in (first, second):
            async with server_api(node) as lk:
                rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=["cluster-api"]))
                assert [r.name for r in rooms.rooms] == ["cluster-api"]
                people = await lk.room.list_participants(
                    api.ListParticipantsRequest(room="cluster-api")
                )
                assert [p.identity for p in people.participants] == ["member"]
        async with server_api(second) as lk:
            await lk.room.update_room_metadata(
                api.UpdateRoomMetadataRequest(room="cluster-api", metadata="set via node 2")
            )
            await lk.room.send_data(
                api.SendDataRequest(room="cluster-api", data=b"via node 2", topic="t")
            )
            await lk.room.update_participant(
                api.UpdateParticipantRequest(room="cluster-api", identity="member", name="M")
            )
            created = await lk.room.create_room(api.CreateRoomRequest(name="cluster-made"))
        await metadata.wait_for(lambda e: e[1] == "set via node 2")
        await data.wait_for(lambda p: p.data == b"via node 2")
        await wait_until(lambda: member.local_participant.name == "M")
        async with server_api(first) as lk:
            listed = await lk.room.list_rooms(api.ListRoomsRequest(names=["cluster-made"]))
            assert [r.sid for r in listed.rooms] == [created.sid]
            await lk.room.delete_room(api.DeleteRoomRequest(room="cluster-made"))
        async with server_api(second) as lk:
            listed = await lk.room.list_rooms(api.ListRoomsRequest(names=["cluster-made"]))
            assert not listed.rooms


async def test_relayed_participant_is_removed_by_the_api(
    nodes: Callable[..., ServerProcess],
) -> None:
    first, second = nodes(), nodes()
    async with joined(first, "anchor", "cluster-remove"):
        removed = await connect(second, "leaver", "cluster-remove")
        disconnected = EventLog(removed, "disconnected")
        async with server_api(second) as lk:
            await lk.room.remove_participant(
                api.RoomParticipantIdentity(room="cluster-remove", identity="leaver")
            )
        assert await disconnected.wait_for() == rtc.DisconnectReason.PARTICIPANT_REMOVED


def node_id_of(node: ServerProcess) -> str:
    for line in node.logs().splitlines():
        if "registered (" in line and " node ND_" in line:
            return line.split(" node ", 1)[1].split()[0]
    raise AssertionError(f"no node id in the log:\n{node.logs()}")


async def listed_rooms(node: ServerProcess) -> set[str]:
    async with server_api(node) as lk:
        return {r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms}


async def health_is(node: ServerProcess, status: int) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"{node.http_url}/") as response:
        return response.status == status


async def eventually(check: Callable[[], Any], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def test_killed_node_is_cleaned_up_and_its_room_moves(
    nodes: Callable[..., ServerProcess], redis: RedisProcess
) -> None:
    first, second = nodes(), nodes()
    victim, survivor = first, second
    async with server_api(survivor) as lk:
        await lk.room.create_room(
            api.CreateRoomRequest(name="cluster-kill", node_id=node_id_of(victim))
        )
    assert await room_node_of(redis, "cluster-kill") == node_id_of(victim)
    participant = await connect(victim, "doomed", "cluster-kill")
    try:
        victim.proc.kill()
        victim.proc.wait()
        killed_at = time.monotonic()

        async def room_gone() -> bool:
            return "cluster-kill" not in await listed_rooms(survivor)

        await eventually(room_gone, 10, "the dead node's room stayed listed")
        assert time.monotonic() - killed_at < 10
        async with joined(survivor, "newcomer", "cluster-kill") as newcomer:
            assert newcomer.connection_state == rtc.ConnectionState.CONN_CONNECTED
            assert await room_node_of(redis, "cluster-kill") == node_id_of(survivor)
    finally:
        await participant.disconnect()


async def test_rooms_survive_a_redis_restart(
    nodes: Callable[..., ServerProcess], redis: RedisProcess
) -> None:
    first, second = nodes(), nodes()
    async with server_api(first) as lk:
        await lk.room.create_room(
            api.CreateRoomRequest(name="cluster-redis", node_id=node_id_of(first))
        )
    async with (
        joined(first, "steady", "cluster-redis") as steady,
        joined(first, "friend", "cluster-redis") as friend,
    ):
        got = EventLog(friend, "data_received")
        redis.stop()
        # The health check says Not Ready once the node's stats are stale (LiveKit: 4 s).
        await eventually(lambda: health_is(first, 406), 10, "health stayed OK without Redis")
        await steady.local_participant.publish_data(b"while redis is down")
        await got.wait_for(lambda p: p.data == b"while redis is down")
        redis.start()

        async def listed_everywhere() -> bool:
            try:
                return all(["cluster-redis" in await listed_rooms(n) for n in (first, second)])
            except api.TwirpError:
                return False

        await eventually(listed_everywhere, 10, "the room did not come back to the store")
        await eventually(lambda: health_is(first, 200), 10, "health did not recover")
        await steady.local_participant.publish_data(b"after redis is back")
        await got.wait_for(lambda p: p.data == b"after redis is back")
        async with joined(second, "late", "cluster-redis") as late:
            await wait_until(lambda: "steady" in late.remote_participants)


async def test_sigterm_drains_the_node(
    nodes: Callable[..., ServerProcess], redis: RedisProcess
) -> None:
    """A draining node takes no new rooms and hands its rooms to the rest of the cluster: each
    participant is asked to reconnect (a leave with RECONNECT) and rejoins the same room, now
    on a serving node; then the node exits."""
    draining, other = nodes(), nodes()
    async with server_api(other) as lk:
        await lk.room.create_room(
            api.CreateRoomRequest(name="cluster-drain", node_id=node_id_of(draining))
        )
    # Connected through the other node (as through a load balancer), hosted on the draining one.
    stayer = rtc.Room()
    reconnected = EventLog(stayer, "reconnected")
    await asyncio.wait_for(stayer.connect(other.ws_url, make_token("stayer", "cluster-drain")), 15)
    try:
        first_sid = stayer.local_participant.sid
        draining.proc.terminate()

        async def shutting_down() -> bool:
            client = Redis(host="127.0.0.1", port=redis.port)
            try:
                entry = await client.hget("nodes", node_id_of(draining))
            finally:
                await client.aclose()
            return entry is None or b"SHUTTING_DOWN" in entry

        await eventually(shutting_down, 5, "the node did not announce SHUTTING_DOWN")
        await reconnected.wait_for(within_s=30)
        assert await room_node_of(redis, "cluster-drain") == node_id_of(other)
        assert stayer.local_participant.sid != first_sid, "a full reconnect: a new participant"
        assert await asyncio.to_thread(draining.proc.wait, 15) == 0
        assert "handing room cluster-drain over to the cluster" in draining.logs()
        # The room goes on: a newcomer finds the stayer in it.
        async with joined(other, "joiner", "cluster-drain") as joiner:
            await wait_until(lambda: "stayer" in joiner.remote_participants)
    finally:
        await stayer.disconnect()


async def test_a_node_alone_waits_for_its_participants(
    nodes: Callable[..., ServerProcess], redis: RedisProcess
) -> None:
    """With no other node serving, a draining node has nowhere to send its participants: it
    waits for them, as LiveKit's drain does."""
    draining, other = nodes(), nodes()
    # Hosted on the draining node: a room placed on the other would be handed over when the
    # other stops, and the stayer could still be rejoining when this node is told to drain.
    async with server_api(other) as lk:
        await lk.room.create_room(
            api.CreateRoomRequest(name="cluster-alone", node_id=node_id_of(draining))
        )
    stayer = await connect(draining, "stayer", "cluster-alone")
    try:
        assert other.stop() == 0

        async def other_gone() -> bool:
            client = Redis(host="127.0.0.1", port=redis.port)
            try:
                return not await client.hexists("nodes", node_id_of(other))
            finally:
                await client.aclose()

        await eventually(other_gone, 30, "the stopped node stayed registered")
        draining.proc.terminate()
        await asyncio.sleep(2.0)
        assert draining.proc.poll() is None, "a node alone waits for its participants"
        assert stayer.connection_state == rtc.ConnectionState.CONN_CONNECTED
    finally:
        await stayer.disconnect()
    assert await asyncio.to_thread(draining.proc.wait, 15) == 0


async def test_refusal_by_the_hosting_node_is_the_edges_http_status(
    nodes: Callable[..., ServerProcess],
) -> None:
    first, second = nodes(), nodes()
    async with server_api(second) as lk:
        await lk.room.create_room(
            api.CreateRoomRequest(
                name="cluster-full", max_participants=1, node_id=node_id_of(first)
            )
        )
    async with joined(first, "only", "cluster-full"), aiohttp.ClientSession() as http:
        token = make_token("second", "cluster-full")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{second.ws_url}/rtc?access_token={token}&protocol=15")
        assert refused.value.status == 500
        async with http.get(f"{second.http_url}/rtc/validate?access_token={token}") as response:
            assert response.status == 200  # the room exists, on the other node


@pytest.mark.parametrize("path", ["/rtc", "/rtc/v1"])
async def test_a_resume_reaching_another_node_is_relayed_to_the_room(
    nodes: Callable[..., ServerProcess], path: str
) -> None:
    host, edge = nodes(), nodes()
    async with server_api(edge) as lk:
        await lk.room.create_room(
            api.CreateRoomRequest(name="cluster-resume", node_id=node_id_of(host))
        )
    participant = await connect(host, "traveller", "cluster-resume")
    try:
        sid = participant.local_participant.sid
        # The client comes back through the load balancer, which picks the other node.
        token = make_token("traveller", "cluster-resume")
        url = f"{edge.ws_url}/rtc?access_token={token}&reconnect=1&sid={sid}&protocol=15"
        if path == "/rtc/v1":  # a single-PC client's resume: the join request says it
            url = f"{edge.ws_url}/rtc/v1?access_token={token}"
            url += f"&join_request={join_request_param(reconnect_sid=sid)}"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            first = proto.SignalResponse()
            first.ParseFromString(await ws.receive_bytes(timeout=10))
            assert first.WhichOneof("message") == "reconnect", first
            following = proto.SignalResponse()
            following.ParseFromString(await ws.receive_bytes(timeout=10))
            assert following.WhichOneof("message") == "update"
        await wait_until(lambda: "participant resumed: traveller" in host.logs())
    finally:
        await participant.disconnect()
