"""Routing without a network: node selection, placement, dead nodes, relay links, RPC."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from config.schema import NodeSelectorConfig, RegionConfig
from routing.bus import LocalBus
from routing.node import NodeInfo, NodeState, NodeStats, NoNodeError, select_node
from routing.relay import (
    Frame,
    LinkClosedError,
    StartSession,
    open_edge_link,
    open_host_link,
    signal_channel,
)
from routing.router import STATS_FRESH_S, Router, RpcRequest, RpcResponse
from routing.store import LocalStore

NOW = 1_000_000.0


def node(
    node_id: str,
    *,
    age: float = 0.0,
    state: NodeState = NodeState.SERVING,
    load: float = 0.0,
    rooms: int = 0,
    region: str = "",
) -> NodeInfo:
    stats = NodeStats(updated_at=NOW - age, load_avg_last1min=load, num_rooms=rooms)
    return NodeInfo(id=node_id, num_cpus=2, state=state, stats=stats, region=region)


def test_only_alive_serving_nodes_are_chosen() -> None:
    nodes = [
        node("ND_stale", age=6.0),
        node("ND_draining", state=NodeState.SHUTTING_DOWN),
        node("ND_ok"),
    ]
    for seed in range(20):
        chosen = select_node(nodes, NodeSelectorConfig(), now=NOW, rng=random.Random(seed))
        assert chosen.id == "ND_ok"
    with pytest.raises(NoNodeError):
        select_node(nodes[:2], NodeSelectorConfig(), now=NOW)


def test_sysload_limit_and_sort_by() -> None:
    nodes = [node("ND_busy", load=1.9, rooms=1), node("ND_idle", load=0.2, rooms=5)]
    sysload = NodeSelectorConfig(kind="sysload", sysload_limit=0.7, sort_by="rooms")
    assert select_node(nodes, sysload, now=NOW).id == "ND_idle"
    # When every node is over the limit, all of them stay candidates (LiveKit).
    hot = [node("ND_a", load=1.9, rooms=3), node("ND_b", load=1.8, rooms=1)]
    assert select_node(hot, sysload, now=NOW).id == "ND_b"
    by_rooms = NodeSelectorConfig(sort_by="rooms")
    assert select_node(nodes, by_rooms, now=NOW).id == "ND_busy"


def test_regionaware_prefers_the_nearest_region() -> None:
    regions = (
        RegionConfig("us-west", 44.2, -123.0),
        RegionConfig("us-east", 39.0, -77.5),
        RegionConfig("eu", 50.1, 8.7),
    )
    config = NodeSelectorConfig(kind="regionaware", regions=regions)
    nodes = [node("ND_eu", region="eu"), node("ND_east", region="us-east")]
    chosen = select_node(nodes, config, now=NOW, current_region="us-west")
    assert chosen.id == "ND_east"


def test_node_entries_round_trip_and_bad_ones_are_refused() -> None:
    entry = node("ND_x", load=0.5, region="eu")
    assert NodeInfo.from_json(entry.to_json()) == entry
    for bad in (b"[]", b'{"ip": "1.2.3.4"}', b'{"id": "ND_y", "state": "NAPPING"}'):
        with pytest.raises(ValueError):
            NodeInfo.from_json(bad)


def _router(node_id: str, store: LocalStore, bus: LocalBus) -> Router:
    return Router(
        NodeInfo(id=node_id), store, bus, NodeSelectorConfig(), lambda: NodeStats(time.time())
    )


async def _answer(request: RpcRequest) -> RpcResponse:
    return RpcResponse(200, request.body[::-1])


async def test_placement_keeps_a_room_on_its_node_and_drops_dead_ones() -> None:
    store, bus = LocalStore(), LocalBus()
    first, second = _router("ND_1", store, bus), _router("ND_2", store, bus)
    await first.start(_answer)
    await second.start(_answer)
    try:
        host = await first.room_host("r", create=True)
        assert host in ("ND_1", "ND_2")
        assert await second.room_host("r", create=False) == host
        assert await first.room_host("unknown", create=False) is None
        assert await second.room_host("pinned", create=True, preferred="ND_1") == "ND_1"
        # ND_1 stops answering: its stats go stale, its rooms are placed anew.
        await store.store_node(node("ND_1", age=10.0))
        assert await second.room_host("pinned", create=True) == "ND_2"
    finally:
        await first.stop()
        await second.stop()


async def test_draining_node_gets_no_new_rooms() -> None:
    store, bus = LocalStore(), LocalBus()
    first, second = _router("ND_1", store, bus), _router("ND_2", store, bus)
    await first.start(_answer)
    await second.start(_answer)
    try:
        await first.drain()
        for index in range(10):
            assert await first.room_host(f"room-{index}", create=True) == "ND_2"
    finally:
        await first.stop()
        await second.stop()


async def test_rpc_reaches_the_other_node() -> None:
    store, bus = LocalStore(), LocalBus()
    first, second = _router("ND_1", store, bus), _router("ND_2", store, bus)
    await second.start(_answer)
    try:
        request = RpcRequest(first.reply_channel(), "svc", "M", "Bearer x", b"abc")
        response = await first.call("ND_2", request)
        assert (response.status, response.body) == (200, b"cba")
    finally:
        await second.stop()


async def test_relay_link_carries_frames_in_order_and_closes() -> None:
    bus = LocalBus()
    hosts = await bus.subscribe(signal_channel("ND_host"))
    start = StartSession("CO_1", "ND_edge", "Bearer t", "a=1")
    edge = await open_edge_link(bus, "ND_host", start)
    received = StartSession.decode(await hosts.get())
    assert received == start
    host = await open_host_link(bus, received)
    for index in range(100):
        host.send(Frame.BINARY, bytes([index]))
    frames = [await edge.receive() for _ in range(100)]
    assert frames == [(Frame.BINARY, bytes([i])) for i in range(100)]
    edge.send(Frame.TEXT, b"{}")
    assert await host.receive() == (Frame.TEXT, b"{}")
    await edge.close()
    with pytest.raises(LinkClosedError):
        await asyncio.wait_for(host.receive(), 2)
    await host.close()
    await hosts.close()


def test_start_session_refuses_garbage() -> None:
    for bad in (b"[]", b"{}", b'{"connection_id": "CO_1"}'):
        with pytest.raises(ValueError):
            StartSession.decode(bad)


def test_health_turns_406_once_the_stats_are_older_than_4_s() -> None:
    router = _router("ND_health", LocalStore(), LocalBus())
    router.registered_at = 100.0
    assert router.healthy(100.0 + STATS_FRESH_S)
    assert not router.healthy(100.0 + STATS_FRESH_S + 0.01)
