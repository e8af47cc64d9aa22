"""Prometheus metrics without a network: node media counters, the collector against constructed
rooms, event counts, the /metrics endpoint and its basic auth."""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from livekit.protocol import models, rtc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from config import CliOverrides, ConfigError, load_config
from protocol import rtcp, rtp
from protocol.sdp_media import Codec, OutgoingTrack
from protocol.token import VideoGrant
from server.metrics import Lifecycle, MetricsSources, NodeCollector, create_registry
from server.metrics_http import install_metrics, metrics_app
from sfu import fanout
from sfu.counters import NODE_COUNTERS, MediaCounters
from sfu.downtrack import DownTrack
from sfu.endpoint import Endpoint
from sfu.events import EventKind, RoomEvent
from sfu.ice import IceRegistry, UdpMux
from sfu.participant import Participant
from sfu.participant_api import JoinParams
from sfu.receiver import PublishedTrack, TrackReceiver
from sfu.room import Room, RoomSettings
from sfu.rooms import RoomManager
from sfu.rtc_adapter import PeerConnection
from sfu.tracks import ParticipantTracks
from sfu.transport import SubscriberTransport
from tests.e2e.harness import free_port
from tests.fakes import FakePc, FakePeerConnection, FakeSubscriber

VP8 = Codec(96, "video/VP8", 90000)
OPUS = Codec(111, "audio/opus", 48000, 2)
PAYLOAD = b"frame-data"
SECRET = "a-secret-that-is-at-least-32-characters"


def _packet(seq: int, ssrc: int = 5555) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, ssrc) + PAYLOAD


class Scrape:
    """One parsed exposition; samples looked up by name and a subset of their labels."""

    def __init__(self, text: str) -> None:
        self.samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        found = [
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(found) == 1, (name, labels, found)
        return float(found[0])

    def names(self) -> set[str]:
        return {s.name for s in self.samples}


def scrape(registry: CollectorRegistry) -> Scrape:
    return Scrape(generate_latest(registry).decode())


def _registry(
    rooms: RoomManager | None = None, lifecycle: Lifecycle | None = None, **sources: Any
) -> CollectorRegistry:
    manager = rooms or RoomManager(_settings(), auto_create=True)
    return create_registry("ND_test", MetricsSources(manager, **sources), lifecycle or Lifecycle())


def _settings() -> RoomSettings:
    return RoomSettings(empty_timeout=300, departure_timeout=20, max_participants=0)


# --- node media counters ------------------------------------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def __call__(self, data: memoryview) -> bool:
        self.packets.append(bytes(data))
        return True


def _downtrack(receiver: TrackReceiver, sink: _Sink, ssrc: int = 111) -> DownTrack:
    outgoing = OutgoingTrack("video", "1", (VP8,), (), "PA|TR", "TR", ssrc)
    return DownTrack(outgoing, sink, lambda _: None, receiver)


def test_media_totals_survive_retirement_once() -> None:
    counters = MediaCounters()
    upstream: list[bytes] = []
    receiver = TrackReceiver(VP8, 5555, upstream.append)
    downtrack = _downtrack(receiver, _Sink())
    receiver.downtracks["sub"] = downtrack
    counters.add_receiver(receiver)
    counters.add_downtrack(downtrack)
    for seq in (10, 11, 13):  # 12 is lost: one NACK upstream
        receiver.on_packet(_packet(seq), now=0.0)
    receiver.tick(1.0)  # the bitrate takes the interval's bytes; the total keeps them
    receiver.on_packet(_packet(14), now=1.0)
    live = counters.snapshot()
    assert (live.packets_in, live.bytes_in) == (4, 4 * len(PAYLOAD))
    assert (live.packets_out, live.bytes_out) == (4, 4 * len(PAYLOAD))
    assert live.plis_in == 1, "the video downtrack asked for a keyframe on its first packet"
    assert live.nacks_in >= 1
    assert rtcp.keyframe_requests(upstream[0])
    for _ in range(2):  # retiring twice must not count twice
        counters.retire_downtrack(downtrack)
        counters.retire_receiver(receiver)
    assert counters.snapshot() == live
    assert not counters.receivers and not counters.downtracks


#: The subscriber's answer accepting the one video section offered (mid 1).
_ANSWER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n"
    "a=rtpmap:96 VP8/90000\r\n"
)


def test_subscriber_feedback_counts_nacks_keyframe_requests_and_retransmits() -> None:
    counters = MediaCounters()
    subscriber = FakeSubscriber()
    tracks = ParticipantTracks(
        cast(PeerConnection, FakePc()), cast(SubscriberTransport, subscriber), counters
    )
    receiver = TrackReceiver(VP8, 5555, lambda _: None)
    info = models.TrackInfo(sid="TR_v", type=models.TrackType.VIDEO)
    assert tracks.subscribe("PA_pub", PublishedTrack(info=info, receiver=receiver), "PA_sub")
    receiver.on_packet(_packet(9), now=0.0)
    assert not subscriber.pc.sent, "nothing is forwarded before the answer binds it"
    assert subscriber.on_answer is not None
    subscriber.on_answer(_ANSWER)
    for seq in (10, 11, 12):
        receiver.on_packet(_packet(seq), now=0.0)
    sent = subscriber.pc.sent
    ssrc, lost = rtp.ssrc(sent[1]), rtp.sequence_number(sent[1])
    assert subscriber.pc.on_rtcp is not None
    subscriber.pc.on_rtcp(rtcp.nack(1, ssrc, [lost]) + rtcp.pli(1, ssrc))
    subscriber.pc.on_rtcp(rtcp.nack(1, 999, [lost]))  # not one of ours: not counted
    totals = counters.snapshot()
    assert (totals.nacks_out, totals.plis_out) == (1, 1)
    assert (totals.retransmit_packets_out, totals.retransmit_bytes_out) == (1, len(PAYLOAD))
    assert totals.packets_out == 4, "three forwarded, one retransmitted"
    assert tracks.unsubscribe("TR_v", "PA_sub", None)
    assert counters.snapshot() == totals, "the unsubscribed downtrack's counts stay"
    assert not counters.downtracks


# --- the collector against constructed rooms -----------------------------------------------


def _participant(room: Room, identity: str) -> Participant:
    sink = _NullSink()
    return Participant(
        sid=f"PA_{identity}",
        params=JoinParams(identity=identity, grant=VideoGrant(room_join=True, room=room.name)),
        room_name=room.name,
        sink=sink,
        listener=room,
        endpoint=Endpoint(IceRegistry(), UdpMux(IceRegistry()), 9, 0, ("127.0.0.1",)),
        connect=FakePeerConnection,
    )


class _NullSink:
    def send(self, response: rtc.SignalResponse) -> None:
        return None

    def close(self) -> None:
        return None


def _publish(publisher: Participant, sid: str, kind: models.TrackType) -> PublishedTrack:
    """A negotiated track as ``ParticipantTracks.negotiated`` leaves it."""
    codec = OPUS if kind == models.TrackType.AUDIO else VP8
    track = PublishedTrack(
        info=models.TrackInfo(sid=sid, type=kind), receiver=TrackReceiver(codec, 1, lambda _: None)
    )
    publisher.tracks.published[sid] = track
    return track


async def test_room_participant_and_track_gauges_follow_the_rooms() -> None:
    rooms = RoomManager(_settings(), auto_create=True)
    registry = _registry(rooms)
    room = rooms.get_or_create("gauges", may_create=True)
    rooms.get_or_create("empty", may_create=True)
    publisher, viewer = _participant(room, "pub"), _participant(room, "viewer")
    for participant in (publisher, viewer):
        await room.join(participant, rtc.JoinResponse())
    audio = _publish(publisher, "TR_a", models.TrackType.AUDIO)
    _publish(publisher, "TR_v", models.TrackType.VIDEO)
    viewer.subscribe_to(publisher, audio, negotiate=False)
    result = scrape(registry)
    assert result.value("livekit_room_total") == 2
    assert result.value("livekit_participant_total") == 2
    assert result.value("livekit_track_published_total", kind="AUDIO") == 1
    assert result.value("livekit_track_published_total", kind="VIDEO") == 1
    assert result.value("livekit_track_subscribed_total", kind="AUDIO") == 1
    assert result.value("livekit_track_subscribed_total", kind="VIDEO") == 0
    downtrack = viewer.tracks.downtracks["TR_a"]
    assert downtrack in NODE_COUNTERS.downtracks
    await room.remove(viewer, models.DisconnectReason.CLIENT_INITIATED)
    assert downtrack not in NODE_COUNTERS.downtracks, "its counts moved to the node totals"
    result = scrape(registry)
    assert result.value("livekit_participant_total") == 1
    assert result.value("livekit_track_subscribed_total", kind="AUDIO") == 0
    await rooms.stop()
    result = scrape(registry)
    assert result.value("livekit_room_total") == 0
    assert result.value("livekit_participant_total") == 0
    assert result.value("livekit_track_published_total", kind="AUDIO") == 0


def test_every_livekit_sample_has_node_labels_and_process_metrics_are_there() -> None:
    result = scrape(_registry())
    livekit = [s for s in result.samples if s.name.startswith("livekit_")]
    assert livekit
    for sample in livekit:
        assert sample.labels["node_id"] == "ND_test", sample
        assert sample.labels["node_type"] == "SERVER", sample
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"):
        assert name in result.names()
    assert any(name.startswith("python_gc_") for name in result.names())


def test_packet_counters_split_retransmissions_with_livekit_labels() -> None:
    counters = MediaCounters()
    totals = counters.totals
    totals.packets_in, totals.bytes_in = 100, 10_000
    totals.packets_out, totals.bytes_out = 250, 25_000
    totals.retransmit_packets_out, totals.retransmit_bytes_out = 5, 500
    totals.nacks_in, totals.nacks_out, totals.plis_in, totals.plis_out = 3, 7, 2, 4
    result = scrape(_registry(media=counters))
    packets, octets = "livekit_packet_total", "livekit_packet_bytes"
    incoming = {"direction": "incoming", "transmission": "initial", "country": ""}
    assert result.value(packets, **incoming) == 100
    assert result.value(octets, **incoming) == 10_000
    assert result.value(packets, direction="outgoing", transmission="initial") == 245
    assert result.value(packets, direction="outgoing", transmission="retransmit") == 5
    assert result.value(octets, direction="outgoing", transmission="initial") == 24_500
    assert result.value(octets, direction="outgoing", transmission="retransmit") == 500
    assert result.value("livekit_nack_total", direction="incoming", country="") == 3
    assert result.value("livekit_nack_total", direction="outgoing") == 7
    assert result.value("livekit_pli_total", direction="incoming") == 2
    assert result.value("livekit_pli_total", direction="outgoing") == 4


def test_quality_windows_export_loss_jitter_rtt_and_scores() -> None:
    counters = MediaCounters()
    publisher = ParticipantTracks(cast(Any, FakePc()), cast(Any, FakeSubscriber()), counters)
    receiver = TrackReceiver(VP8, 5555, lambda _: None)
    publisher.published["TR_v"] = PublishedTrack(
        info=models.TrackInfo(sid="TR_v", type=models.TrackType.VIDEO), receiver=receiver
    )
    for sequence in (*range(1, 90), *range(91, 101)):  # one of 100 lost
        receiver.on_packet(_packet(sequence), 1.0)
    sink = _Sink()
    downtrack = _downtrack(receiver, sink)
    publisher.downtracks["TR_other"] = downtrack
    receiver.downtracks["PA_sub"] = downtrack
    for sequence in range(101, 151):
        receiver.on_packet(_packet(sequence), 2.0)
    downtrack.on_receiver_report(fraction_lost=26, jitter=900, last_sr=0, delay=0, now=3.0)
    downtrack.rtt = 0.120
    publisher.connection_score()
    result = scrape(_registry(media=counters))
    incoming = {"direction": "incoming", "type": "video", "source": "", "country": ""}
    assert result.value("livekit_packet_loss_total", **incoming) == 1
    outgoing = {"direction": "outgoing", "type": "video"}
    assert result.value("livekit_packet_loss_total", **outgoing) == 5  # 26/256 of 50
    assert result.value("livekit_jitter_us_count", **outgoing) == 1
    assert result.value("livekit_jitter_us_sum", **outgoing) == 10_000  # 900 / 90 kHz
    assert result.value("livekit_rtt_ms_sum", **outgoing) == 120
    assert result.value("livekit_packet_loss_percent_count", **incoming) == 1
    assert result.value("livekit_quality_score_count") == 1
    assert result.value("livekit_quality_rating_count") == 1


def test_twirp_and_webhook_counts_take_livekit_labels() -> None:
    twirp = {
        ("livekit.RoomService", "ListRooms", 200, ""): 3,
        ("livekit.RoomService", "DeleteRoom", 404, "not_found"): 1,
        ("livekit.RoomService", "GetParticipant", 404, "not_found"): 2,
        ("livekit.RoomService", "CreateRoom", 503, "unavailable"): 1,
    }
    hooks = {("room_started", "success"): 2, ("room_started", "dropped"): 1}
    result = scrape(_registry(twirp_stats=lambda: twirp, webhook_counts=lambda: hooks))
    status = "livekit_node_twirp_request_status"
    assert result.value(status, method="ListRooms", status="200", code="") == 3
    assert result.value(status, method="DeleteRoom", status="4xx", code="not_found") == 1
    assert result.value(status, method="CreateRoom", status="5xx", code="unavailable") == 1
    assert result.value(status, service="RoomService", method="GetParticipant") == 2
    dispatch = "livekit_webhook_dispatch_total"
    assert result.value(dispatch, status="success", reason="", event="room_started") == 2
    assert result.value(dispatch, status="drop", event="room_started") == 1


# --- event counts ---------------------------------------------------------------------------


def _event(
    kind: EventKind,
    *,
    reason: models.DisconnectReason = models.DisconnectReason.UNKNOWN_REASON,
    joined_ms: int = 0,
    track: models.TrackType | None = None,
    created_s: int = 0,
) -> RoomEvent:
    participant = models.ParticipantInfo(
        identity="p", disconnect_reason=reason, joined_at_ms=joined_ms, client_protocol=15
    )
    info = models.TrackInfo(sid="TR_x", type=track) if track is not None else None
    room = models.Room(name="r", creation_time=created_s, creation_time_ms=created_s * 1000)
    return RoomEvent(kind, room, participant, info)


def test_room_events_count_joins_publications_and_durations() -> None:
    lifecycle = Lifecycle(clock=lambda: 1000.0)
    registry = _registry(lifecycle=lifecycle)
    aborted = EventKind.PARTICIPANT_CONNECTION_ABORTED
    reasons = models.DisconnectReason
    for event in (
        _event(EventKind.PARTICIPANT_JOINED),
        _event(EventKind.PARTICIPANT_JOINED),
        _event(EventKind.PARTICIPANT_LEFT, joined_ms=940_000),  # stayed 60 s
        _event(aborted, reason=reasons.CLIENT_INITIATED),
        _event(aborted, reason=reasons.SIGNAL_CLOSE, joined_ms=999_000),  # after 1 s
        _event(aborted, reason=reasons.SIGNAL_CLOSE, joined_ms=900_000),  # after 100 s
        _event(aborted, reason=reasons.CONNECTION_TIMEOUT),
        _event(EventKind.TRACK_PUBLISHED, track=models.TrackType.VIDEO),
        _event(EventKind.ROOM_FINISHED, created_s=993),  # lasted 7 s
    ):
        lifecycle.on_room_event(event)
    result = scrape(registry)
    joins = "livekit_participant_join_total"
    assert result.value(joins, state="rtc_active", warp="false") == 2
    assert result.value(joins, state="rtc_success", warp="false") == 2
    assert result.value(joins, state="rtc_canceled") == 2, "client leave, quick signal close"
    assert result.value(joins, state="rtc_failure") == 2, "late signal close, timeout"
    assert result.value(joins, state="signal_connected") == 0
    published = "livekit_track_publish_counter"
    assert result.value(published, kind="VIDEO", state="success") == 1
    assert result.value(published, kind="AUDIO", state="success") == 0
    rooms = "livekit_room_duration_seconds"
    assert result.value(f"{rooms}_bucket", le="5") == 0
    assert result.value(f"{rooms}_bucket", le="10") == 1
    assert result.value(f"{rooms}_count") == 1
    assert result.value(f"{rooms}_sum") == 7
    sessions = "livekit_session_duration_ms"
    assert result.value(f"{sessions}_count", protocol_version="15") == 1
    assert result.value(f"{sessions}_sum", protocol_version="15") == 60_000


async def test_rtc_responses_count_signal_stages() -> None:
    lifecycle = Lifecycle()
    for path, status in (
        ("/rtc", 101),
        ("/rtc", 101),
        ("/rtc", 401),
        ("/rtc", 404),
        ("/rtc", 500),
        ("/rtc/validate", 401),
        ("/", 200),
    ):
        await lifecycle.on_response_prepare(
            make_mocked_request("GET", path), web.Response(status=status)
        )
    joins = lifecycle.joins
    assert joins["signal_connected", ""] == 2
    assert joins["signal_validation_failed", ""] == 2
    assert joins["signal_failed", ""] == 1


def test_collector_reads_state_at_scrape_time() -> None:
    counts: dict[tuple[str, str, int, str], int] = {}
    rooms = RoomManager(_settings(), auto_create=True)
    collector = NodeCollector(
        "ND_test", MetricsSources(rooms, twirp_stats=lambda: counts), Lifecycle()
    )
    families = {family.name: family for family in collector.collect()}
    assert families["livekit_node_twirp_request_status"].samples == []
    counts["livekit.RoomService", "ListRooms", 200, ""] = 1
    rooms.get_or_create("later", may_create=True)
    families = {family.name: family for family in collector.collect()}
    assert [s.value for s in families["livekit_node_twirp_request_status"].samples] == [1]
    assert [s.value for s in families["livekit_room_total"].samples] == [1]


# --- the endpoint ---------------------------------------------------------------------------


@asynccontextmanager
async def _client(app: web.Application) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def _basic(user: str, password: str) -> Mapping[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_metrics_endpoint_without_credentials_is_open() -> None:
    async with _client(metrics_app(_registry())) as client:
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert Scrape(await response.text()).value("livekit_room_total") == 0


async def test_metrics_endpoint_basic_auth() -> None:
    async with _client(metrics_app(_registry(), "prom", "hunter2")) as client:
        for headers in ({}, _basic("prom", "wrong"), _basic("other", "hunter2")):
            response = await client.get("/metrics", headers=headers)
            assert response.status == 401, headers
            assert response.headers["WWW-Authenticate"] == 'Basic realm="Protected Area"'
        response = await client.get("/metrics", headers={"Authorization": "Basic !!!"})
        assert response.status == 401
        response = await client.get("/metrics", headers=_basic("prom", "hunter2"))
        assert response.status == 200
        assert "livekit_participant_total" in Scrape(await response.text()).names()


def _config(body: str) -> Any:
    overrides = CliOverrides(config_body=f"keys:\n  k: {SECRET}\n" + body)
    return load_config(overrides, {}).config


async def test_install_serves_on_the_metrics_port_from_startup_to_cleanup() -> None:
    from sfu.events import EventBus

    port = free_port()
    config = _config(f"bind_addresses: [127.0.0.1]\nprometheus:\n  port: {port}\n")
    app = web.Application()
    rooms = RoomManager(_settings(), auto_create=True)
    assert install_metrics(
        app, config, node_id="ND_x", events=EventBus(), sources=MetricsSources(rooms)
    )
    runner = web.AppRunner(app)
    await runner.setup()  # startup: the metrics site is up, although the app has no site yet
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                assert Scrape(await response.text()).value("livekit_room_total") == 0
    finally:
        await runner.cleanup()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"http://127.0.0.1:{port}/metrics")


def test_install_does_nothing_without_a_port() -> None:
    from sfu.events import EventBus

    app = web.Application()
    sources = MetricsSources(RoomManager(_settings(), auto_create=True))
    assert (
        install_metrics(app, _config(""), node_id="ND_x", events=EventBus(), sources=sources)
        is None
    )
    assert not app.on_response_prepare and not app.cleanup_ctx


def test_config_wants_both_credentials_and_prefers_prometheus_port() -> None:
    with pytest.raises(ConfigError, match="set both or neither"):
        _config("prometheus:\n  port: 6789\n  username: prom\n")
    assert _config("prometheus_port: 6789\nprometheus:\n  port: 6790\n").metrics_port == 6789
    body = f"keys:\n  k: {SECRET}\nprometheus:\n  port: 1\n  username: a\n  password: b\n"
    loaded = load_config(CliOverrides(config_body=body), {})
    assert loaded.warnings == (), "the prometheus keys are implemented"


# --- the Grafana dashboard ------------------------------------------------------------------


def test_grafana_dashboard_queries_only_metrics_we_export() -> None:
    path = Path(__file__).resolve().parents[2] / "deploy/grafana/livekit-py-server.json"
    dashboard = json.loads(path.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    lifecycle = Lifecycle()
    lifecycle.on_room_event(_event(EventKind.PARTICIPANT_LEFT))  # histograms with samples
    registry = _registry(
        lifecycle=lifecycle,
        twirp_stats=lambda: {("livekit.RoomService", "ListRooms", 200, ""): 1},
        webhook_counts=lambda: {("room_started", "success"): 1},
    )
    exported = scrape(registry).names()
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            queried |= set(re.findall(r"\b(?:livekit|process|python)_\w+", target["expr"]))
    assert queried <= exported, queried - exported
    wanted = {
        "livekit_room_total",
        "livekit_participant_total",
        "livekit_track_published_total",
        "livekit_track_subscribed_total",
        "livekit_packet_total",
        "livekit_packet_bytes",
        "livekit_nack_total",
        "livekit_pli_total",
        "livekit_participant_join_total",
        "livekit_node_twirp_request_status",
        "livekit_webhook_dispatch_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    }
    assert wanted <= queried, wanted - queried


def test_srtp_protect_failures_are_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    rooms = RoomManager(_settings(), auto_create=True)
    registry = _registry(rooms)
    monkeypatch.setattr(fanout, "_python_protect_failures", 0)
    before = scrape(registry).value("livekit_srtp_protect_failure_total")
    fanout.count_protect_failure()
    fanout.count_protect_failure()
    assert scrape(registry).value("livekit_srtp_protect_failure_total") == before + 2
