"""The aiortc/aioice adapter: the private details it relies on, and a loopback pair."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from importlib import metadata

import aioice.ice
import pytest

from sfu.rtc_adapter import (
    ConnectionState,
    DataChannel,
    PeerConnection,
    configure_host_addresses,
)


@pytest.fixture
def loopback_only() -> Iterator[None]:
    configure_host_addresses(["127.0.0.1"])
    yield
    configure_host_addresses([])


def test_pinned_versions() -> None:
    # The adapter replaces aioice.ice.get_host_addresses; re-check it when these change.
    assert metadata.version("aiortc") == "1.16.0"
    assert metadata.version("aioice") == "0.13.0"


def test_host_addresses_follow_node_ip(loopback_only: None) -> None:
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1"]
    assert aioice.ice.get_host_addresses(use_ipv4=False, use_ipv6=True) == []


def test_loopback_added_in_dev() -> None:
    configure_host_addresses([], add_loopback=True)
    try:
        assert "127.0.0.1" in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
    finally:
        configure_host_addresses([])


def test_default_host_addresses_restored() -> None:
    configure_host_addresses([])
    addresses = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
    assert "127.0.0.1" not in addresses  # aioice's own rule, which node_ip works around


async def _channel_named(channels: asyncio.Queue[DataChannel], label: str) -> DataChannel:
    while True:
        channel = await asyncio.wait_for(channels.get(), 10)
        if channel.label == label:
            return channel


async def test_pair_connects_and_queues_reliable_data(loopback_only: None) -> None:
    server = PeerConnection("subscriber")
    client = PeerConnection("client")
    states: list[ConnectionState] = []
    server.on_state_change = states.append
    remote_channels: asyncio.Queue[DataChannel] = asyncio.Queue()
    client.on_data_channel = remote_channels.put_nowait
    reliable = server.create_data_channel("_reliable", reliable=True)
    lossy = server.create_data_channel("_lossy", reliable=False)
    # Sent before anything is connected: reliable waits, lossy is dropped.
    assert reliable.send(b"early")
    assert not lossy.send(b"dropped")
    try:
        offer = await server.create_offer()
        assert "127.0.0.1" in offer
        answer = await client.answer(offer)
        await server.set_answer(answer)
        received: asyncio.Queue[bytes] = asyncio.Queue()
        channel = await _channel_named(remote_channels, "_reliable")
        channel.on_message = received.put_nowait
        assert await asyncio.wait_for(received.get(), 10) == b"early"
        assert reliable.send(b"later")
        assert await asyncio.wait_for(received.get(), 10) == b"later"
        assert ConnectionState.CONNECTED in states
    finally:
        await server.close()
        await client.close()


async def test_bad_candidates_are_value_errors(loopback_only: None) -> None:
    pc = PeerConnection("publisher")
    other = PeerConnection("client")
    try:
        other.create_data_channel("_reliable", reliable=True)
        await pc.answer(await other.create_offer())
        with pytest.raises(ValueError):
            await pc.add_candidate({"candidate": "candidate:garbage", "sdpMid": "0"})
        with pytest.raises(ValueError):
            await pc.add_candidate({"candidate": 42})
        # End of candidates and TCP candidates are accepted and ignored.
        await pc.add_candidate({"candidate": "", "sdpMid": "0"})
        tcp = "candidate:1 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active"
        await pc.add_candidate({"candidate": tcp, "sdpMid": "0", "sdpMLineIndex": 0})
    finally:
        await pc.close()
        await other.close()


async def test_bad_sdp_is_a_value_error(loopback_only: None) -> None:
    pc = PeerConnection("publisher")
    try:
        with pytest.raises(ValueError):
            await pc.answer("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n")
        with pytest.raises(ValueError):
            await pc.set_answer("garbage")
    finally:
        await pc.close()
