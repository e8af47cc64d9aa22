"""Simulcast without a network: which layer each subscriber gets, switches only on keyframes,
a stopped layer replaced by one that flows, RTX padding never taken for media
(sfu/simulcast.py, sfu/simulcast_track.py, sfu/tracks.py)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, cast

from livekit.protocol import models, rtc

from protocol import rtcp, rtp, sdp, sdp_media
from sfu.receiver import PublishedTrack
from sfu.simulcast import (
    SETTLE_S,
    LayerActivity,
    LayerSelector,
    choose_layer,
    quality_for_dimension,
    spatial_order,
)
from sfu.tracks import ParticipantTracks
from tests.fakes import FakePc, FakeSubscriber
from tests.unit.test_sdp import PARAMS

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
MID, RID, REPAIRED_RID = 4, 10, 11  # the extension ids of the captured Chromium offer
VP8_PT, RTX_PT = 96, 97
Q, H, F, RTX_Q = 1001, 1002, 1003, 2001
SSRC_OF_LAYER = {0: Q, 1: H, 2: F}
LOW, MEDIUM, HIGH = models.VideoQuality.LOW, models.VideoQuality.MEDIUM, models.VideoQuality.HIGH
KEY, DELTA = b"\x10\x00keyframe", b"\x10\x01delta"  # RFC 7741: S=1 PID=0, then P clear/set


def test_livekit_rids_rank_whatever_their_order() -> None:
    assert spatial_order(["f", "h", "q"]) == {"q": 0, "h": 1, "f": 2}
    # rids LiveKit does not name keep the publisher's order
    assert spatial_order(["2", "1", "0"]) == {"2": 0, "1": 1, "0": 2}


def test_choose_layer_prefers_the_highest_allowed_then_the_lowest_above() -> None:
    assert choose_layer(2, {0, 1, 2}) == 2
    assert choose_layer(1, {0, 1, 2}) == 1
    assert choose_layer(1, {0, 2}) == 0
    assert choose_layer(0, {1, 2}) == 1, "a picture rather than none"
    assert choose_layer(2, set()) is None
    assert choose_layer(-1, {0}) is None


def test_element_size_maps_to_a_quality_as_livekit_maps_it() -> None:
    info = models.TrackInfo(width=1280, height=720)
    for quality, (width, height) in enumerate([(320, 180), (640, 360), (1280, 720)]):
        info.layers.append(
            models.VideoLayer(quality=cast(Any, quality), width=width, height=height)
        )
    assert quality_for_dimension(info, 160, 90) == LOW
    assert quality_for_dimension(info, 320, 180) == LOW
    assert quality_for_dimension(info, 360, 200) == LOW, "within 10 % of 180"
    assert quality_for_dimension(info, 400, 240) == MEDIUM
    assert quality_for_dimension(info, 1280, 720) == HIGH
    bare = models.TrackInfo(width=1280, height=720)  # no layers described: 180, 360, original
    assert quality_for_dimension(bare, 600, 340) == MEDIUM
    portrait = models.TrackInfo(width=720, height=1280)
    assert quality_for_dimension(portrait, 170, 300) == LOW


def test_activity_tells_stopped_and_settled_layers() -> None:
    activity = LayerActivity()
    for step in range(10):  # both flow for 2 s
        now = step * 0.2
        activity.sample(0, step + 1, now)
        activity.sample(2, step + 1, now)
    assert activity.flowing(1.8) == {0, 2}
    assert activity.settled(1.8) == {0, 2}
    for step in range(10, 14):  # layer 2 stops
        activity.sample(0, step + 1, step * 0.2)
    assert activity.flowing(2.6) == {0}
    activity.sample(2, 100, 2.8)  # and comes back: flowing, but not settled yet
    assert activity.flowing(2.8) == {0, 2}
    assert activity.settled(2.8) == {0}
    for step in range(1, 6):
        activity.sample(2, 100 + step, 2.8 + step * SETTLE_S / 5)
    assert 2 in activity.settled(2.8 + SETTLE_S)


def test_a_slow_layer_is_not_taken_for_stopped() -> None:
    """A static screen share sends a frame a second: its usual gap sets its patience."""
    activity = LayerActivity()
    for second in range(8):
        activity.sample(0, second + 1, float(second))
    assert activity.flowing(8.5) == {0}


def test_selector_moves_down_at_once_and_up_once_settled() -> None:
    selector = LayerSelector(max_layer=2)
    assert selector.retarget({0, 1, 2}, set()) == 2, "nothing yet: any flowing layer"
    selector.switched(2)
    assert selector.retarget({0, 1}, {0, 1}) == 1, "its layer stopped"
    selector.switched(1)
    assert selector.retarget({0, 1, 2}, {0, 1}) == -1, "2 is back but not settled"
    assert selector.retarget({0, 1, 2}, {0, 1, 2}) == 2
    selector.max_layer = 0
    assert selector.retarget({0, 1, 2}, {1, 2}) == 0, "down needs no settling"


# --- a published Chromium camera, through ParticipantTracks ---------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _packet(ssrc: int, sequence: int, payload: bytes, rid: bytes = b"", pt: int = VP8_PT) -> bytes:
    elements = [(MID, b"1")] + ([(RID, rid)] if rid else [])
    block = rtp.build_extension_block(elements)
    header = struct.pack("!BBHII", 0x90, pt, sequence, sequence * 3000, ssrc)
    return header + block + payload


def _published_chromium_camera(
    clock: Clock,
) -> tuple[ParticipantTracks, FakePc, PublishedTrack]:
    publisher = FakePc()
    tracks = ParticipantTracks(cast(Any, publisher), cast(Any, FakeSubscriber()), clock=clock)
    offer_text = (VECTORS / "chromium_simulcast_offer.sdp").read_text()
    offer = sdp.parse(offer_text)
    answer = sdp_media.answer(
        offer, PARAMS, ["audio/opus", "video/VP8", "video/rtx"], session_id=1, address="x"
    )
    video = offer.media[1]
    cid = (video.value("msid") or "").split(" ")[1]
    request = rtc.AddTrackRequest(cid=cid, type=models.TrackType.VIDEO, width=1280, height=720)
    tracks.add(request, can_publish_source=True)
    ready, _ = tracks.negotiated(sdp.parse(offer_text), answer)
    assert [t.info.mid for t in ready] == ["1"]
    return tracks, publisher, ready[0]


class Meeting:
    """A simulcast publisher, its layers fed by hand, and subscribers that record what they
    get (by the original payload: each layer's packets say which layer they are)."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.tracks, self.publisher, self.track = _published_chromium_camera(self.clock)
        self.sequences = {Q: 0, H: 0, F: 0}
        self.viewers: dict[str, tuple[ParticipantTracks, FakePc]] = {}

    def start_layers(self, *layers: int) -> None:
        for layer in layers:
            rid = b"qhf"[layer : layer + 1]
            self.send(layer, KEY, rid)

    def send(self, layer: int, payload: bytes, rid: bytes = b"") -> None:
        ssrc = SSRC_OF_LAYER[layer]
        self.sequences[ssrc] += 1
        tagged = payload + bytes([layer])
        self.tracks.ingest.on_rtp(_packet(ssrc, self.sequences[ssrc], tagged, rid))

    def frame(self, layers: tuple[int, ...] = (0, 1, 2), key: bool = False) -> None:
        """One frame on each layer given, 50 ms later."""
        self.clock.now += 0.05
        for layer in layers:
            self.send(layer, KEY if key else DELTA)

    def subscribe(self, name: str) -> tuple[ParticipantTracks, FakePc]:
        subscriber = FakeSubscriber()
        viewer = ParticipantTracks(cast(Any, FakePc()), cast(Any, subscriber), clock=self.clock)
        assert viewer.subscribe("PA_pub", self.track, name)
        viewer.downtracks[self.track.sid].bind()
        self.viewers[name] = (viewer, subscriber.pc)
        return viewer, subscriber.pc

    def layers_received(self, name: str) -> list[int]:
        return [packet[-1] for packet in self.viewers[name][1].sent]

    def settings(self, name: str, **fields: Any) -> None:
        update = rtc.UpdateTrackSettings(track_sids=[self.track.sid], **fields)
        self.viewers[name][0].update_settings(update, name)


def test_rtx_padding_first_is_not_taken_for_the_camera() -> None:
    clock = Clock()
    tracks, _, track = _published_chromium_camera(clock)
    receiver = track.receiver
    assert receiver is not None
    # libwebrtc's bandwidth probes: RTX padding, before any media.
    padding = struct.pack("!BBHII", 0x90, RTX_PT, 1, 0, RTX_Q) + rtp.build_extension_block(
        [(MID, b"1"), (REPAIRED_RID, b"q")]
    )
    tracks.ingest.on_rtp(padding)
    assert receiver.media_ssrc == 0
    tracks.ingest.on_rtp(_packet(Q, 20, KEY, b"q"))
    assert receiver.media_ssrc == Q
    tracks.ingest.on_rtp(padding)
    assert receiver.rtx == (RTX_PT, RTX_Q), "q's RTX is known by its repaired rid"
    tracks.ingest.on_rtp(_packet(H, 10, KEY, b"h"))
    assert track.simulcast is not None
    assert sorted(track.simulcast.receivers) == [0, 1], "each layer has its own receiver"
    assert track.simulcast.receivers[1].media_ssrc == H
    # Later packets of q carry no rid (libwebrtc stops sending it) and still reach q.
    tracks.ingest.on_rtp(_packet(Q, 21, DELTA))
    assert receiver.stats.received == 2


def test_each_subscriber_gets_the_layer_it_asks_for_from_a_keyframe() -> None:
    meeting = Meeting()
    meeting.start_layers(0, 1, 2)
    meeting.subscribe("high")
    meeting.subscribe("low")
    meeting.settings("low", quality=LOW)
    for _ in range(4):
        meeting.frame()
    assert meeting.layers_received("high") == [], "no keyframe yet: nothing forwarded"
    assert meeting.publisher.rtcp_sent, "keyframes are asked for"
    meeting.frame(key=True)
    for _ in range(3):
        meeting.frame()
    assert meeting.layers_received("high") == [2] * 4
    assert meeting.layers_received("low") == [0] * 4


def test_switching_waits_for_a_keyframe_and_keeps_numbering_continuous() -> None:
    meeting = Meeting()
    meeting.start_layers(0, 1, 2)
    meeting.subscribe("viewer")
    meeting.frame(key=True)
    meeting.frame()
    meeting.settings("viewer", quality=MEDIUM)
    for _ in range(5):
        meeting.frame()
    assert set(meeting.layers_received("viewer")) == {2}, "still on 2 until 1 has a keyframe"
    meeting.frame(key=True)
    meeting.frame()
    assert meeting.layers_received("viewer")[-2:] == [1, 1]
    sent = meeting.viewers["viewer"][1].sent
    sequences = [rtp.sequence_number(p) for p in sent]
    assert sequences == list(range(sequences[0], sequences[0] + len(sent)))
    timestamps = [rtp.timestamp(p) for p in sent]
    assert timestamps == sorted(timestamps)
    assert len({rtp.ssrc(p) for p in sent}) == 1


def test_a_subscriber_falls_back_when_its_layer_stops_and_returns_after() -> None:
    meeting = Meeting()
    meeting.start_layers(0, 1, 2)
    meeting.subscribe("viewer")
    for _ in range(30):  # 1.5 s: all layers settled
        meeting.frame()
    meeting.frame(key=True)
    assert meeting.layers_received("viewer")[-1] == 2
    stopped_at = meeting.clock.now
    while meeting.clock.now < stopped_at + 0.8:  # the publisher drops its top layer
        meeting.frame((0, 1))
    meeting.frame((0, 1), key=True)
    assert meeting.layers_received("viewer")[-1] == 1, "fell back within a second"
    restart = meeting.clock.now
    while meeting.clock.now < restart + SETTLE_S + 0.3:
        meeting.frame()
    meeting.frame(key=True)
    assert meeting.layers_received("viewer")[-1] == 2


def test_element_size_and_disabled_settings() -> None:
    meeting = Meeting()
    meeting.start_layers(0, 1, 2)
    meeting.subscribe("viewer")
    meeting.settings("viewer", width=320, height=180)
    meeting.frame(key=True)
    assert meeting.layers_received("viewer") == [0]
    meeting.settings("viewer", width=320, height=180, disabled=True)
    meeting.frame(key=True)
    assert meeting.layers_received("viewer") == [0], "disabled: paused"


def test_adaptive_stream_starts_low_and_unsubscribe_leaves_no_trace() -> None:
    meeting = Meeting()
    meeting.start_layers(0, 1, 2)
    viewer, _ = meeting.subscribe("first")
    viewer.adaptive_stream = True
    late = ParticipantTracks(cast(Any, FakePc()), cast(Any, FakeSubscriber()), clock=meeting.clock)
    late.adaptive_stream = True
    late.subscribe("PA_pub", meeting.track, "late")
    late.downtracks[meeting.track.sid].bind()
    meeting.frame(key=True)
    assert meeting.track.simulcast is not None
    assert meeting.track.simulcast.current_layer("late") == 0
    assert meeting.track.simulcast.current_layer("first") == 2
    late.unsubscribe(meeting.track.sid, "late", meeting.track)
    for receiver in meeting.track.receivers():
        assert "late" not in receiver.downtracks
        assert "late" not in receiver.switching


def test_track_info_names_each_layers_ssrc() -> None:
    clock = Clock()
    tracks, _, track = _published_chromium_camera(clock)
    del track.info.layers[:]
    for quality, rid in enumerate("qhf"):
        track.info.layers.append(models.VideoLayer(quality=cast(Any, quality), rid=rid))
    tracks.ingest.on_rtp(_packet(Q, 1, KEY, b"q"))
    tracks.ingest.on_rtp(_packet(F, 1, KEY, b"f"))
    assert [layer.ssrc for layer in track.info.layers] == [Q, 0, F]


def test_a_switch_keeps_the_timeline_the_sender_reports_give() -> None:
    """q's clock runs 1500 ticks (about 17 ms) ahead of f's by their Sender Reports: the first
    q packet after the switch goes out that much behind where f's would have, not at the wall
    clock's estimate (which would be a whole 50 ms frame later)."""
    meeting = Meeting()
    meeting.start_layers(0, 1, 2)
    ntp = 3_900_000_000 << 32
    for ssrc, rtp_time in ((F, 300_000), (Q, 301_500)):
        meeting.tracks._on_publisher_rtcp(rtcp.sender_report(ssrc, ntp, rtp_time, 1, 1))
    meeting.subscribe("viewer")
    meeting.frame(key=True)
    meeting.frame()
    meeting.settings("viewer", quality=LOW)
    meeting.frame((0, 1, 2), key=True)
    sent = meeting.viewers["viewer"][1].sent
    assert [p[-1] for p in sent] == [2, 2, 0]
    step = (rtp.timestamp(sent[2]) - rtp.timestamp(sent[1])) & 0xFFFFFFFF
    assert step == 3000 - 1500, step


def test_a_seconds_reports_for_every_layer_go_in_one_packet() -> None:
    """RR blocks for each layer and the REMB for the whole track: one compound packet (one
    SRTCP protect and send) a second, not one per layer."""
    meeting = Meeting()
    meeting.start_layers(0, 1, 2)
    meeting.publisher.rtcp_sent.clear()
    meeting.clock.now += 1
    meeting.tracks.tick(meeting.clock.now)
    assert len(meeting.publisher.rtcp_sent) == 1
    (compound,) = meeting.publisher.rtcp_sent
    reported = {block[0] for block in rtcp.report_blocks(compound)}
    assert reported == {Q, H, F}
    assert not list(rtcp.remb_estimates(compound)), "Chromium negotiated transport-cc"
    meeting.tracks.ingest.twcc_id = 0  # a publisher without it gets REMB, in the same packet
    meeting.clock.now += 1
    meeting.tracks.tick(meeting.clock.now)
    ((_, covered),) = list(rtcp.remb_estimates(meeting.publisher.rtcp_sent[-1]))
    assert set(covered) == {Q, H, F} and len(meeting.publisher.rtcp_sent) == 2


def test_an_ended_subscription_forgets_its_ssrcs_on_the_subscriber_transport() -> None:
    meeting = Meeting()
    viewer, pc = meeting.subscribe("viewer")
    outgoing = viewer.downtracks[meeting.track.sid].outgoing
    assert viewer.unsubscribe(meeting.track.sid, "viewer", meeting.track)
    assert pc.forgotten == [s for s in (outgoing.ssrc, outgoing.rtx_ssrc) if s]
