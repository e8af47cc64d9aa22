"""ForwardParticipant across nodes without a network: the source's link and the destination's
copy joined by two relay objects that hand each other their datagrams."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import struct
import time
from collections.abc import Callable
from typing import Any, cast

import pytest
from livekit.protocol import models, rtc

from config.schema import NodeSelectorConfig
from protocol import rtcp
from protocol.sdp_media import Codec
from routing.bus import LocalBus
from routing.node import NodeInfo, NodeStats
from routing.router import Router, RpcRequest
from routing.store import LocalStore
from sfu.media_relay import FEEDBACK, MEDIA, SENDER_REPORT, MediaRelay, header
from sfu.participant import Participant
from sfu.receiver import PublishedTrack, TrackReceiver
from sfu.remote_forward import RemoteCopy, RemoteLink, TrackOffer, encode_message
from sfu.room import Room, RoomSettings
from sfu.rooms import RoomManager
from sfu.simulcast_track import SimulcastTrack
from signaling.forward_cluster import ForwardCluster
from signaling.twirp import TwirpError
from tests.unit.test_room import _join

VP8 = Codec(96, "video/VP8", 90000, rtcp_fb=("nack", "nack pli"))
OPUS = Codec(111, "audio/opus", 48000, 2)
FORWARDED = models.ParticipantInfo.KindDetail.FORWARDED
DISCONNECTED = models.ParticipantInfo.State.DISCONNECTED
SESSION = b"\x01\x02\x03\x04\x05\x06\x07\x08"


class Control:
    """A control channel that records what it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.closed = False

    def send(self, method: str, body: dict[str, Any]) -> None:
        self.sent.append((method, body))

    def close(self) -> None:
        self.closed = True

    def methods(self) -> list[str]:
        return [method for method, _ in self.sent]


def _wire(first: MediaRelay, second: MediaRelay) -> None:
    """Each relay's datagrams reach the other at once."""
    first.address, second.address = ("10.0.0.1", 1001), ("10.0.0.2", 1002)
    first.send = lambda datagram, to: second.datagram_received(datagram, ("10.0.0.1", 1001))  # type: ignore[method-assign]
    second.send = lambda datagram, to: first.datagram_received(datagram, ("10.0.0.2", 1002))  # type: ignore[method-assign]


def _packet(sequence: int, ssrc: int, pt: int = 96) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, sequence, sequence * 3000, ssrc) + b"frame"


def _track(sid: str, codec: Codec, ssrc: int, rtcp_out: list[bytes]) -> PublishedTrack:
    info = models.TrackInfo(sid=sid, type=models.TrackType.VIDEO, mime_type=codec.mime)
    return PublishedTrack(info=info, receiver=TrackReceiver(codec, ssrc, rtcp_out.append))


class Pair:
    """A source participant's link and its copy on the 'other node'."""

    def __init__(self, participant: Participant, source_room: Room) -> None:
        self.source_relay = MediaRelay(clock=lambda: 1.0)
        self.destination_relay = MediaRelay(clock=lambda: 1.0)
        _wire(self.source_relay, self.destination_relay)
        self.to_destination, self.to_source = Control(), Control()
        self.link = RemoteLink(
            SESSION,
            participant,
            source_room,
            "to",
            self.source_relay,
            self.to_destination,
            clock=lambda: 100.0,
        )
        body = self.link.open_body("to", "ND_source")
        info = models.ParticipantInfo()
        info.ParseFromString(base64.b64decode(body["info"]))
        self.copy = RemoteCopy(
            SESSION,
            info,
            self.destination_relay,
            self.source_relay.address,
            self.to_source,
            dynacast_delay=5.0,
        )
        for offer in body["tracks"]:
            self.copy.add_track(TrackOffer.from_json(json.loads(json.dumps(offer))))
        self.destination_relay.sessions[SESSION] = self.copy
        self.link.start(self.destination_relay.address)


async def test_media_reaches_the_copy_and_its_requests_reach_the_publisher() -> None:
    room = Room(name="from", sid="RM_from", settings=RoomSettings(), now=0.0)
    source, _ = await _join(room, "source")
    to_publisher: list[bytes] = []
    camera = _track("TR_cam", VP8, 5555, to_publisher)
    source.tracks.published[camera.sid] = camera
    pair = Pair(source, room)
    copy_track = pair.copy.published["TR_cam"]
    copied = copy_track.receiver
    assert copied is not None and copy_track.info.sid == "TR_cam"
    # Packets are relayed as they arrive, in every layer's receiver.
    for sequence in (1, 2, 4):
        camera.receivers()[0].on_packet(_packet(sequence, 5555), 100.0)
    assert [copied.cache.get(s) is not None for s in (1, 2, 3, 4)] == [True, True, False, True]
    assert copied.media_ssrc == 5555
    # The copy NACKed 3: the source answers from its cache; a keyframe request goes upstream.
    assert copied.cache.get(3) is None
    camera.receivers()[0].cache.put(3, _packet(3, 5555))
    copied.send_rtcp(rtcp.nack(1, 5555, [3]))
    assert copied.cache.get(3) == _packet(3, 5555)
    copied.request_keyframe(200.0)
    assert any(list(rtcp.keyframe_requests(p)) == [5555] for p in to_publisher)
    # Sender Reports follow, for lip sync at the destination.
    camera.receivers()[0].on_sender_report(0x1122334455667788, 1234, 100.0)
    assert (copied.stats.last_sr_ntp, copied.stats.last_sr_rtp) == (0x1122334455667788, 1234)


async def test_tracks_come_and_go_and_stopping_ends_the_relay() -> None:
    room = Room(name="from", sid="RM_from", settings=RoomSettings(), now=0.0)
    source, _ = await _join(room, "source")
    pair = Pair(source, room)
    assert pair.copy.published == {}
    mic = _track("TR_mic", OPUS, 7777, [])
    mic.info.type = models.TrackType.AUDIO
    source.tracks.published[mic.sid] = mic
    pair.link.track_published(source, mic)
    method, body = pair.to_destination.sent[-1]
    assert method == "Publish"
    pair.copy.add_track(TrackOffer.from_json(body["track"]))
    mic.receivers()[0].on_packet(_packet(9, 7777, pt=111), 1.0)
    copied = pair.copy.published["TR_mic"].receiver
    assert copied is not None and copied.cache.get(9) is not None
    pair.link.track_unpublished(source, mic)
    assert pair.to_destination.methods()[-1] == "Unpublish"
    assert mic.receivers()[0].relay is None
    pair.link.track_published(source, mic)
    pair.link.stop()
    assert pair.to_destination.methods()[-1] == "Stop" and pair.to_destination.closed
    assert mic.receivers()[0].relay is None
    assert SESSION not in pair.source_relay.sessions
    pair.link.stop()
    assert pair.to_destination.methods().count("Stop") == 1


async def test_simulcast_layers_and_dynacast_across_nodes() -> None:
    room = Room(name="from", sid="RM_from", settings=RoomSettings(), now=0.0)
    source, _ = await _join(room, "source")
    to_publisher: list[bytes] = []
    camera = _track("TR_sim", VP8, 100, to_publisher)
    camera.simulcast = SimulcastTrack(["q", "h", "f"], camera.info)
    for spatial, ssrc in enumerate((100, 200, 300)):
        receiver = (
            camera.receiver if spatial == 0 else TrackReceiver(VP8, ssrc, to_publisher.append)
        )
        assert receiver is not None
        camera.simulcast.add_layer(spatial, receiver)
    source.tracks.published[camera.sid] = camera
    pair = Pair(source, room)
    # Until the destination says otherwise, every layer is wanted for it.
    assert camera.simulcast.dynacast.remote == {SESSION.hex(): 2}
    camera.simulcast.receivers[2].on_packet(_packet(5, 300), 1.0)
    copied = pair.copy.published["TR_sim"].simulcast
    assert copied is not None and set(copied.receivers) == {2}
    assert copied.receivers[2].media_ssrc == 300
    camera.simulcast.receivers[0].on_packet(_packet(6, 100), 1.0)
    assert set(copied.receivers) == {0, 2}
    # Nobody subscribes at the destination: after the pause delay it asks for no layers.
    copied.update_dynacast(10.0)
    copied.update_dynacast(16.0)
    method, body = pair.to_source.sent[-1]
    assert (method, body["sid"], body["top"]) == ("Layers", "TR_sim", -1)
    pair.link.want_layers("TR_sim", body["top"])
    assert camera.simulcast.dynacast.remote == {SESSION.hex(): -1}
    pair.link.stop()
    assert camera.simulcast.dynacast.remote == {}


def test_offers_round_trip_and_bad_ones_are_refused() -> None:
    info = models.TrackInfo(sid="TR_x", name="cam", width=640)
    offer = TrackOffer(3, info, VP8, red=None, rids=("q", "h"), svc=False)
    assert TrackOffer.from_json(json.loads(json.dumps(offer.to_json()))) == offer
    good = offer.to_json()
    bad: object
    for bad in (
        [],
        {**good, "index": -1},
        {**good, "index": "1"},
        {**good, "info": "not base64!"},
        {**good, "codec": {"mime": "video/VP8"}},
        {**good, "rids": [1]},
    ):
        with pytest.raises(ValueError):
            TrackOffer.from_json(bad)


def test_the_relay_drops_what_it_cannot_place() -> None:
    relay = MediaRelay(clock=lambda: 5.0)
    seen: list[tuple[int, int, int, bytes]] = []

    class Endpoint:
        def on_relay(self, kind: int, index: int, spatial: int, body: bytes, now: float) -> None:
            seen.append((kind, index, spatial, body))

    relay.sessions[SESSION] = Endpoint()
    for junk in (
        b"",
        b"\x01",
        header(MEDIA, b"\x00" * 8, 1, 0) + b"rtp",
        b"\x09" + SESSION + b"\x00" * 3,
    ):
        relay.datagram_received(junk, ("10.0.0.9", 9))
    assert relay.dropped == 4 and seen == []
    relay.datagram_received(header(MEDIA, SESSION, 258, 2) + b"rtp", ("10.0.0.9", 9))
    assert seen == [(MEDIA, 258, 2, b"rtp")]


async def test_calls_that_cannot_be_read_are_refused() -> None:
    cluster = ForwardCluster(
        cast(Router, None), RoomManager(RoomSettings(), auto_create=True), "127.0.0.1", ""
    )

    async def call(method: str, body: object) -> tuple[int, str]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = await cluster.serve(RpcRequest("reply", "forwards", method, "", raw))
        return response.status, json.loads(response.body).get("code", "")

    info = encode_message(models.ParticipantInfo(identity="someone"))
    open_body = {"session": SESSION.hex(), "room": "to", "source_node": "ND_1", "tracks": []}
    assert await call("Open", b"\xff") == (400, "malformed")
    assert await call("Open", [1]) == (400, "malformed")
    assert await call("Open", {**open_body, "session": "abcd"}) == (400, "malformed")
    assert await call("Open", {**open_body, "relay": ["10.0.0.1", 70000], "info": info}) == (
        400,
        "malformed",
    )
    assert await call("Open", {**open_body, "relay": ["10.0.0.1", 7], "info": "AA=="}) == (
        400,
        "malformed",
    )
    assert await call("Update", {"session": SESSION.hex(), "info": info}) == (404, "not_found")
    for top in (3, -2, "1", None):
        layers = {"session": SESSION.hex(), "sid": "TR", "top": top}
        assert await call("Layers", layers) == (400, "malformed")
    assert await call("Layers", {"session": SESSION.hex(), "sid": "TR", "top": 1}) == (
        404,
        "not_found",
    )
    await asyncio.sleep(0)


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - the state polled has no event to await
            await asyncio.sleep(0.01)


async def test_two_nodes_open_follow_and_end_a_forward() -> None:
    """Two nodes on one in-process bus, real relay sockets on loopback: the calls in both
    directions, and no task left once the forward is over."""
    store, bus = LocalStore(), LocalBus()
    routers = [
        Router(NodeInfo(id=n), store, bus, NodeSelectorConfig(), lambda: NodeStats(time.time()))
        for n in ("ND_1", "ND_2")
    ]
    managers = [RoomManager(RoomSettings(), auto_create=True) for _ in routers]
    clusters = [
        ForwardCluster(r, m, "127.0.0.1", "") for r, m in zip(routers, managers, strict=True)
    ]
    for router, cluster in zip(routers, clusters, strict=True):
        await router.start(cluster.serve)
    try:
        source_room = managers[0].get_or_create("from", may_create=True)
        destination = managers[1].get_or_create("to", may_create=True)
        source, _ = await _join(source_room, "source")
        watcher, watcher_sink = await _join(destination, "watcher")
        tasks = len(asyncio.all_tasks())
        await clusters[0].forward(source_room, source, "to", "ND_2")
        with pytest.raises(TwirpError) as refused:
            await clusters[0].forward(source_room, source, "to", "ND_2")
        assert refused.value.code == "already_exists"
        copy = destination.forwards.incoming["source"]
        assert FORWARDED in copy.to_info().kind_details
        mic = _track("TR_mic", OPUS, 7777, [])
        source.tracks.published[mic.sid] = mic
        source_room.on_track_published(source, mic)
        await _until(lambda: "TR_mic" in copy.published)
        mic.receivers()[0].on_packet(_packet(3, 7777, pt=111), 1.0)
        relayed = copy.published["TR_mic"].receiver
        assert relayed is not None
        await _until(lambda: relayed.cache.get(3) is not None)
        # The watcher took the track; the source's permission then keeps it from it.
        assert "TR_mic" in watcher.tracks.downtracks
        source_room.update_subscription_permission(source, rtc.SubscriptionPermission())
        await _until(lambda: "TR_mic" not in watcher.tracks.downtracks)
        denied = watcher_sink.of("subscription_permission_update")[-1]
        assert not denied.subscription_permission_update.allowed
        # Removed at the destination: the source's node stops relaying and forgets it.
        destination.forwards.stop("source")
        await _until(lambda: not source_room.forwards.outgoing)
        assert mic.receivers()[0].relay is None
        assert any(
            p.identity == "source" and p.state == DISCONNECTED
            for r in watcher_sink.of("update")
            for p in r.update.participants
        )
        await _until(lambda: len(asyncio.all_tasks()) <= tasks)
    finally:
        for cluster in clusters:
            await cluster.close()
        for router in routers:
            await router.stop()


async def test_garbage_inside_a_session_is_dropped_quietly() -> None:
    """A peer node's bug must not raise into the event loop: random bodies of every kind, at
    both ends of a forward with a simulcast and an audio track."""
    room = Room(name="from", sid="RM_from", settings=RoomSettings(), now=0.0)
    source, _ = await _join(room, "source")
    camera = _track("TR_sim", VP8, 100, [])
    camera.simulcast = SimulcastTrack(["q", "h"], camera.info)
    assert camera.receiver is not None
    camera.simulcast.add_layer(0, camera.receiver)
    source.tracks.published[camera.sid] = camera
    source.tracks.published["TR_mic"] = _track("TR_mic", OPUS, 7, [])
    pair = Pair(source, room)
    rng = random.Random(7)
    for _ in range(3000):
        kind = rng.choice((MEDIA, SENDER_REPORT, FEEDBACK, 0, 255))
        index, spatial = rng.randrange(4), rng.randrange(256)
        size = rng.choice((0, 1, 11, 12, 13, 20, 200))
        body = bytes(rng.randrange(256) for _ in range(size))
        if rng.random() < 0.5 and size >= 12:
            body = bytes((0x80 | (body[0] & 0x3F),)) + body[1:]  # RTP version 2
        datagram = header(kind, SESSION, index, spatial) + body
        pair.destination_relay.datagram_received(datagram, ("10.0.0.1", 1001))
        pair.source_relay.datagram_received(datagram, ("10.0.0.2", 1002))
