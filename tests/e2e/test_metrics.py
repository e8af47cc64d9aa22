"""``/metrics`` of the real server, scraped while real SDK participants publish and subscribe,
parsed with ``prometheus_client``'s parser and checked against what the test did."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
import pytest
from livekit import api, rtc
from prometheus_client.parser import text_string_to_metric_families

from protocol.ids import node_id_for_host
from tests.e2e.harness import API_KEY, API_SECRET, ServerProcess, free_port, make_token
from tests.e2e.sdk import EVENT_TIMEOUT_S, EventLog, joined
from tests.e2e.test_media import hear, publishing_colour, publishing_tone
from tests.webhook_sink import WebhookSink

pytestmark = pytest.mark.sdk

Start = Callable[..., ServerProcess]
PACKETS, BYTES = "livekit_packet_total", "livekit_packet_bytes"
IN = {"direction": "incoming", "transmission": "initial"}
OUT = {"direction": "outgoing", "transmission": "initial"}


class Scrape:
    """One parsed scrape; samples looked up by name and a subset of their labels."""

    def __init__(self, text: str) -> None:
        self.samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def value(self, name: str, labels: Mapping[str, str] | None = None, **more: str) -> float:
        wanted = {**(labels or {}), **more}
        found = [
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in wanted.items())
        ]
        assert len(found) == 1, (name, wanted, found)
        return float(found[0])


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def scrape(port: int, headers: Mapping[str, str] | None = None) -> Scrape:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as response:
            assert response.status == 200, response.status
            return Scrape(await response.text())


async def scrape_until(port: int, condition: Callable[[Scrape], bool]) -> Scrape:
    """Scrape until ``condition`` holds (state the server changes after a client's action)."""

    async def poll() -> Scrape:
        while not condition(result := await scrape(port)):  # noqa: ASYNC110 - no event to await
            await asyncio.sleep(0.1)
        return result

    return await asyncio.wait_for(poll(), EVENT_TIMEOUT_S)


@pytest.fixture
async def sink() -> AsyncIterator[WebhookSink]:
    receiver = WebhookSink(API_KEY, API_SECRET)
    await receiver.start()
    yield receiver
    await receiver.stop()


def _config(port: int, *extra: str) -> str:
    # A short departure timeout, so the room closes (and its duration is observed) in seconds.
    return f"prometheus_port: {port}\nroom:\n  departure_timeout: 1\n" + "".join(extra)


async def test_metrics_follow_a_published_and_subscribed_track(
    start: Start, sink: WebhookSink
) -> None:
    port = free_port()
    hooks = f"webhook:\n  api_key: {API_KEY}\n  urls:\n    - {sink.url}\n"
    server = start(_config(port, hooks))
    idle = await scrape(port)
    assert idle.value("livekit_room_total") == 0
    assert idle.value("livekit_participant_total") == 0
    async with joined(server, "speaker", "metrics") as speaker:
        listener = rtc.Room()
        subscribed = EventLog(listener, "track_subscribed")
        await listener.connect(server.ws_url, make_token("listener", "metrics"))
        try:
            async with publishing_tone(speaker):
                track, _, _ = await subscribed.wait_for()
                flowing = await _while_flowing(port, track)
        finally:
            await listener.disconnect()
    left = await scrape_until(port, lambda s: s.value("livekit_participant_total") == 0)
    _after_leaving(left, flowing)
    closed = await scrape_until(port, lambda s: s.value("livekit_room_total") == 0)
    assert closed.value("livekit_room_duration_seconds_count") == 1
    assert closed.value(PACKETS, OUT) >= left.value(PACKETS, OUT)
    dispatched = "livekit_webhook_dispatch_total"
    delivered = await scrape_until(
        port, lambda s: s.value(dispatched, status="success", event="room_finished") == 1
    )
    started = [e for e in sink.accepted if e.event == "room_started"]
    assert delivered.value(dispatched, status="success", event="room_started") == len(started)


async def _while_flowing(port: int, track: rtc.Track) -> Scrape:
    """Gauges while one publisher sends one audio track to one subscriber, and packet and
    byte counters that grow both ways; returns the last scrape."""
    await hear(track, 0.5)  # media really flows through the server
    first = await scrape(port)
    assert first.value("livekit_room_total") == 1
    assert first.value("livekit_participant_total") == 2
    assert first.value("livekit_track_published_total", kind="AUDIO") == 1
    assert first.value("livekit_track_published_total", kind="VIDEO") == 0
    assert first.value("livekit_track_subscribed_total", kind="AUDIO") == 1
    assert first.value("livekit_track_subscribed_total", kind="VIDEO") == 0
    # One subscriber: each packet in goes out at most once.
    assert 0 < first.value(PACKETS, OUT) <= first.value(PACKETS, IN)
    await hear(track, 0.5)
    second = await scrape(port)
    for name in (PACKETS, BYTES):
        for labels in (IN, OUT):
            assert second.value(name, labels) > first.value(name, labels), (name, labels)
    return second


def _after_leaving(left: Scrape, flowing: Scrape) -> None:
    """Gauges back to zero, counters kept, and what the two participants did counted."""
    assert left.value("livekit_track_published_total", kind="AUDIO") == 0
    assert left.value("livekit_track_subscribed_total", kind="AUDIO") == 0
    for name in (PACKETS, BYTES):
        for labels in (IN, OUT):
            assert left.value(name, labels) >= flowing.value(name, labels), "counters stay"
    joins = "livekit_participant_join_total"
    assert left.value(joins, state="signal_connected") == 2
    assert left.value(joins, state="rtc_active", warp="false") == 2
    assert left.value("livekit_track_publish_counter", kind="AUDIO", state="success") == 1
    sessions = [s for s in left.samples if s.name == "livekit_session_duration_ms_count"]
    assert sum(s.value for s in sessions) == 2, "both stayed until they left"


async def test_nacks_plis_and_retransmissions_are_counted(start: Start) -> None:
    """The transport drops every 25th RTP packet both ways (as the media NACK test does): we
    NACK the publisher, the subscriber NACKs us and gets retransmissions from our cache, and
    the new video downtrack asks the publisher for a keyframe."""
    port = free_port()
    server = start(_config(port), extra_env={"LKPY_TEST_DROP_EVERY": "25"})
    async with joined(server, "lossy-cam", "metrics-nack") as camera:
        viewer = rtc.Room()
        subscribed = EventLog(viewer, "track_subscribed")
        await viewer.connect(server.ws_url, make_token("lossy-eye", "metrics-nack"))
        try:
            async with publishing_colour(camera):
                await subscribed.wait_for()
                result = await scrape_until(
                    port,
                    # Bytes too: libwebrtc's padding-only probes are forwarded and may be the
                    # packet lost and sent again, with no payload to count.
                    lambda s: (
                        s.value(PACKETS, direction="outgoing", transmission="retransmit") > 0
                        and s.value(BYTES, direction="outgoing", transmission="retransmit") > 0
                        and s.value("livekit_nack_total", direction="incoming") > 0
                    ),
                )
                assert result.value("livekit_nack_total", direction="outgoing", country="") > 0
                assert result.value("livekit_pli_total", direction="incoming", country="") > 0
                assert result.value(BYTES, direction="outgoing", transmission="retransmit") > 0
                assert result.value("livekit_track_subscribed_total", kind="VIDEO") == 1
        finally:
            await viewer.disconnect()


async def test_basic_auth_node_labels_and_twirp_counts(start: Start) -> None:
    port = free_port()
    server = start(f"prometheus:\n  port: {port}\n  username: prom\n  password: s3cret\n")
    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as http:
        for headers in ({}, basic("prom", "wrong"), basic("x", "s3cret")):
            async with http.get(url, headers=headers) as response:
                assert response.status == 401, headers
                assert response.headers["WWW-Authenticate"].startswith("Basic")
    lk = api.LiveKitAPI(server.http_url, API_KEY, API_SECRET)
    try:
        await lk.room.list_rooms(api.ListRoomsRequest())
        with pytest.raises(api.TwirpError):
            await lk.room.get_participant(
                api.RoomParticipantIdentity(room="nowhere", identity="nobody")
            )
    finally:
        await lk.aclose()
    result = await scrape(port, basic("prom", "s3cret"))
    status = "livekit_node_twirp_request_status"
    assert result.value(status, service="RoomService", method="ListRooms", status="200") == 1
    assert result.value(status, method="GetParticipant", status="4xx", code="not_found") == 1
    livekit = [s for s in result.samples if s.name.startswith("livekit_")]
    assert livekit
    node_id = node_id_for_host(socket.gethostname())  # the server runs on this machine
    for sample in livekit:
        assert (sample.labels["node_id"], sample.labels["node_type"]) == (node_id, "SERVER")
    assert result.value("process_resident_memory_bytes") > 0
