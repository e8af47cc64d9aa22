"""Sessions that survive (issue 15): a signal blip resumes the same participant, with media and
reliable data carrying on; LiveKit's simulated scenarios; what a publisher is told."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable

import aiohttp
import pytest
from livekit import api, rtc
from livekit.protocol import models
from livekit.protocol import rtc as proto

from tests.e2e.harness import (
    API_KEY,
    API_SECRET,
    IN_NETNS,
    ServerProcess,
    free_udp_port,
    make_token,
)
from tests.e2e.netfilter import blackout, moved_to, needs_nftables
from tests.e2e.sdk import EventLog, Hearing, connect, wait_until
from tests.e2e.test_media import listening, publishing_tone

pytestmark = pytest.mark.sdk

KIND = rtc.SimulateScenarioKind


async def test_signal_reconnect_resumes_the_same_participant(server: ServerProcess) -> None:
    room = "resume"
    speaker = await connect(server, "speaker", room)
    listener = rtc.Room()
    subscribed = EventLog(listener, "track_subscribed")
    reconnected = EventLog(listener, "reconnected")
    left = EventLog(speaker, "participant_disconnected")
    await connect_into(listener, server, "listener", room)
    hearing: Hearing | None = None
    try:
        async with publishing_tone(speaker):
            track, _, _ = await subscribed.wait_for()
            hearing = Hearing(track)
            await wait_until(lambda: bool(hearing and hearing.arrivals))
            sid = listener.local_participant.sid
            since = time.monotonic()
            await listener.simulate_scenario(KIND.SIMULATE_SIGNAL_RECONNECT)
            await reconnected.wait_for()
            await asyncio.sleep(1.5)
            assert listener.local_participant.sid == sid, "resumed, not rejoined"
            assert not left.items, "nobody saw the listener leave"
            assert hearing.longest_gap(since) < 1.0
            assert "participant resumed: listener" in server.logs()
            async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
                listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
            assert sorted(p.identity for p in listed.participants) == ["listener", "speaker"]
    finally:
        if hearing is not None:
            await hearing.close()
        await listener.disconnect()
        await speaker.disconnect()


async def connect_into(room: rtc.Room, server: ServerProcess, identity: str, name: str) -> None:
    await asyncio.wait_for(room.connect(server.ws_url, make_token(identity, name)), 15)


async def test_reliable_data_across_a_resume_arrives_once_in_order(server: ServerProcess) -> None:
    room = "resume-data"
    receiver = await connect(server, "receiver", room)
    sender = rtc.Room()
    reconnected = EventLog(sender, "reconnected")
    received: list[bytes] = []
    receiver.on("data_received", lambda packet: received.append(packet.data))
    await connect_into(sender, server, "sender", room)
    try:
        await wait_until(lambda: "receiver" in sender.remote_participants)

        async def send_all() -> None:
            for index in range(60):
                await sender.local_participant.publish_data(f"m{index}".encode())
                await asyncio.sleep(0.05)

        sending = asyncio.get_running_loop().create_task(send_all())
        await asyncio.sleep(1.0)
        await sender.simulate_scenario(KIND.SIMULATE_SIGNAL_RECONNECT)
        await reconnected.wait_for()
        await sending
        expected = [f"m{i}".encode() for i in range(60)]
        await wait_until(lambda: len(received) >= 60)
        await asyncio.sleep(0.5)
        assert received == expected
    finally:
        await sender.disconnect()
        await receiver.disconnect()


@pytest.mark.skipif(not IN_NETNS, reason="ss -K on the test namespace's own sockets")
async def test_a_killed_signal_connection_resumes(server: ServerProcess) -> None:
    room = "resume-killed"
    participant = rtc.Room()
    reconnected = EventLog(participant, "reconnected")
    await connect_into(participant, server, "killed", room)
    try:
        sid = participant.local_participant.sid
        command = ["ss", "-K", "dst", "127.0.0.1", "dport", "=", str(server.port)]
        killed = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, check=True
        )
        assert "ESTAB" in killed.stdout
        await reconnected.wait_for(within_s=20)
        assert participant.local_participant.sid == sid
        assert "participant resumed: killed" in server.logs()
    finally:
        await participant.disconnect()


@pytest.mark.parametrize("scenario", [KIND.SIMULATE_FULL_RECONNECT, KIND.SIMULATE_NODE_FAILURE])
async def test_full_reconnects_recover_media(
    server: ServerProcess, scenario: rtc.SimulateScenarioKind.ValueType
) -> None:
    room = f"full-{scenario}"
    speaker = await connect(server, "speaker", room)
    listener = rtc.Room()
    subscribed = EventLog(listener, "track_subscribed")
    reconnected = EventLog(listener, "reconnected")
    await connect_into(listener, server, "listener", room)
    try:
        async with publishing_tone(speaker):
            await subscribed.wait_for()
            count = len(subscribed.items)
            await listener.simulate_scenario(scenario)
            await reconnected.wait_for(within_s=30)
            await wait_until(lambda: len(subscribed.items) > count)
            track, _, _ = subscribed.items[-1]  # the rejoined participant's subscription
            hearing = Hearing(track)
            try:
                await wait_until(lambda: len(hearing.arrivals) > 20)
            finally:
                await hearing.close()
    finally:
        await listener.disconnect()
        await speaker.disconnect()


async def test_server_leave_disconnects(server: ServerProcess) -> None:
    participant = rtc.Room()
    disconnected = EventLog(participant, "disconnected")
    await connect_into(participant, server, "leaver", "server-leave")
    try:
        await participant.simulate_scenario(KIND.SIMULATE_SERVER_LEAVE)
        reason = await disconnected.wait_for()
        assert reason == rtc.DisconnectReason.SERVER_SHUTDOWN
    finally:
        await participant.disconnect()


async def test_publisher_is_told_when_its_track_is_first_subscribed(server: ServerProcess) -> None:
    room = "publisher-told"
    publisher = rtc.Room()
    subscribed = EventLog(publisher, "local_track_subscribed")
    await connect_into(publisher, server, "publisher", room)
    try:
        async with publishing_tone(publisher) as publication:
            await asyncio.sleep(0.5)
            assert not subscribed.items, "nobody subscribed yet"
            viewer = await connect(server, "viewer", room)
            try:
                track = await subscribed.wait_for()
                assert track.sid == publication.sid
            finally:
                await viewer.disconnect()
    finally:
        await publisher.disconnect()


async def test_resuming_a_participant_the_node_does_not_have_means_rejoining(
    server: ServerProcess,
) -> None:
    token = make_token("stranger", "resume-unknown")
    url = f"{server.ws_url}/rtc?access_token={token}&reconnect=1&sid=PA_gone&protocol=15"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        first = proto.SignalResponse()
        first.ParseFromString(await ws.receive_bytes(timeout=10))
        assert first.WhichOneof("message") == "leave", "the first frame"
        assert first.leave.action == proto.LeaveRequest.Action.RECONNECT
        assert first.leave.reason == models.DisconnectReason.STATE_MISMATCH


@needs_nftables
async def test_five_seconds_without_a_network_keeps_the_session(
    start: Callable[..., ServerProcess],
) -> None:
    """All of a client's traffic (signal, media, ICE-TCP) dropped for 5 s: the same participant
    carries on (by a resume, or by its transports recovering by themselves), nobody sees it
    leave, and its audio flows again."""
    udp_port = free_udp_port()
    server = start(f"rtc:\n  udp_port: {udp_port}\n", udp_port=False)
    async with listening(server, "blackout") as heard:
        with blackout(server.port, udp_port, server.tcp_port):
            await asyncio.sleep(5.0)
        restored = time.monotonic()
        await wait_until(lambda: any(t > restored for t in heard.hearing.arrivals), within_s=30)
        back = next(t for t in heard.hearing.arrivals if t > restored)
        await asyncio.sleep(2.0)
        assert heard.listener.connection_state == rtc.ConnectionState.CONN_CONNECTED
        assert heard.hearing.longest_gap(back) < 1.0, "audio flows again"


@needs_nftables
async def test_a_client_whose_address_changes_keeps_its_media(
    start: Callable[..., ServerProcess],
) -> None:
    """The clients' packets start coming from another address: the server follows their ICE
    checks there (RFC 8445 7.3.1.5: the nominated pair moves) and both directions carry on,
    with the same participants."""
    udp_port = free_udp_port()
    server = start(f"rtc:\n  udp_port: {udp_port}\n", udp_port=False)
    async with listening(server, "moving") as heard:
        with moved_to("127.0.0.9", udp_port):
            moved = time.monotonic()
            await wait_until(lambda: server.logs().count("client moved from") >= 2)
            await asyncio.sleep(3.0)
            assert heard.hearing.longest_gap(moved) < 5.0, "media came back within a ping or two"
            assert heard.hearing.longest_gap(time.monotonic() - 2.0) < 0.5, "and keeps flowing"
        assert "to udp 127.0.0.9:" in server.logs()
