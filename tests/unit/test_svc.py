"""Scalable VP9 without a network: each subscriber gets the spatial layers up to the one it
asks for, marked and numbered as a stream of its own, and moves only where it can decode
(protocol/keyframes.py vp9_layers, sfu/svc.py)."""

from __future__ import annotations

import struct
from typing import Any, cast

from livekit.protocol import models, rtc

from protocol import rtp
from protocol.keyframes import LAYER_BEGIN, LAYER_END, PICTURE_KEYFRAME, vp9_layers
from protocol.sdp_media import Codec
from sfu.receiver import PublishedTrack, TrackReceiver
from sfu.svc import SvcTrack
from sfu.tracks import ParticipantTracks
from tests.fakes import FakePc, FakeSubscriber

VP9 = Codec(98, "video/VP9", 90000)
LOW, HIGH = models.VideoQuality.LOW, models.VideoQuality.HIGH


def _descriptor(spatial: int, keyframe: bool, picture: int, begin: bool = True) -> bytes:
    """RFC 9628: I, P (inter), L, B, E set as asked; 15-bit picture id; TID 0; SID; TL0PICIDX."""
    first = 0x80 | 0x20 | (0 if keyframe else 0x40) | (0x08 if begin else 0) | 0x04
    layer = (spatial << 1) | (1 if spatial and keyframe else 0)
    return bytes([first, 0x80 | (picture >> 8), picture & 0xFF, layer, picture & 0xFF])


def test_vp9_layers_read_from_the_descriptor() -> None:
    packet = b"\x00" * 12 + _descriptor(2, keyframe=False, picture=300)
    assert vp9_layers(packet, 12, len(packet)) == (2, 0, LAYER_BEGIN | LAYER_END)
    key = b"\x00" * 12 + _descriptor(0, keyframe=True, picture=1)
    assert vp9_layers(key, 12, len(key)) == (0, 0, LAYER_BEGIN | LAYER_END | PICTURE_KEYFRAME)
    upper_key = b"\x00" * 12 + _descriptor(1, keyframe=True, picture=1)
    assert not vp9_layers(upper_key, 12, len(upper_key))[2] & PICTURE_KEYFRAME  # type: ignore[index]
    plain = b"\x00" * 12 + bytes([0x0C]) + b"frame"  # no layer indices: one layer
    assert vp9_layers(plain, 12, len(plain)) == (0, 0, LAYER_BEGIN | LAYER_END | PICTURE_KEYFRAME)
    assert vp9_layers(b"\x00" * 12 + b"\xa0", 12, 13) is None


class Svc:
    """A VP9 L3 publisher fed by hand, and subscribers recording what they get."""

    def __init__(self) -> None:
        self.now = 10.0
        self.publisher = FakePc()
        self.tracks = ParticipantTracks(
            cast(Any, self.publisher), cast(Any, FakeSubscriber()), clock=lambda: self.now
        )
        info = models.TrackInfo(sid="TR_svc", type=models.TrackType.VIDEO, mime_type="video/VP9")
        receiver = TrackReceiver(VP9, 7777, self.publisher.send_rtcp)
        self.track = PublishedTrack(info=info, receiver=receiver, svc=SvcTrack(info))
        receiver.svc = self.track.svc
        self.sequence = 0
        self.picture = 0
        self.viewers: dict[str, tuple[ParticipantTracks, FakePc]] = {}

    def picture_of(self, layers: int = 3, keyframe: bool = False) -> None:
        self.now += 0.033
        self.picture += 1
        for spatial in range(layers):
            self.sequence += 1
            body = _descriptor(spatial, keyframe, self.picture) + bytes([spatial])
            marker = 0x80 if spatial == layers - 1 else 0
            header = struct.pack("!BBHII", 0x80, marker | 98, self.sequence, self.picture, 7777)
            receiver = self.track.receiver
            assert receiver is not None
            receiver.on_packet(header + body, self.now)

    def subscribe(self, name: str, quality: int | None = None) -> None:
        viewer = ParticipantTracks(cast(Any, FakePc()), cast(Any, FakeSubscriber()))
        subscriber_pc = cast(Any, viewer)._subscriber.pc
        if quality is not None:
            viewer.update_settings(
                rtc.UpdateTrackSettings(track_sids=["TR_svc"], quality=cast(Any, quality)), name
            )
        assert viewer.subscribe("PA_pub", self.track, name)
        viewer.downtracks["TR_svc"].bind()
        self.viewers[name] = (viewer, subscriber_pc)

    def settings(self, name: str, quality: int) -> None:
        update = rtc.UpdateTrackSettings(track_sids=["TR_svc"], quality=cast(Any, quality))
        self.viewers[name][0].update_settings(update, name)

    def received(self, name: str) -> list[tuple[int, int, int]]:
        """(layer, marker, sequence number) of each packet the viewer got."""
        return [(p[-1], p[1] >> 7, rtp.sequence_number(p)) for p in self.viewers[name][1].sent]


def test_each_subscriber_gets_its_layers_marked_and_numbered_without_gaps() -> None:
    svc = Svc()
    svc.subscribe("high")
    svc.subscribe("low", LOW)
    svc.picture_of()
    assert svc.received("high") == [], "nothing before a keyframe"
    assert svc.publisher.rtcp_sent, "a keyframe is asked for"
    svc.picture_of(keyframe=True)
    svc.picture_of()
    high = svc.received("high")
    assert [(layer, marker) for layer, marker, _ in high] == [(0, 0), (1, 0), (2, 1)] * 2
    low = svc.received("low")
    assert [(layer, marker) for layer, marker, _ in low] == [(0, 1), (0, 1)]
    sequences = [sequence for _, _, sequence in low]
    assert sequences[1] == (sequences[0] + 1) & 0xFFFF, "the skipped layers leave no gap"


def test_down_at_the_next_picture_up_only_at_a_keyframe() -> None:
    svc = Svc()
    svc.subscribe("viewer")
    svc.picture_of(keyframe=True)
    svc.settings("viewer", LOW)
    svc.picture_of()
    assert [layer for layer, _, _ in svc.received("viewer")[-1:]] == [0]
    count = len(svc.received("viewer"))
    svc.settings("viewer", HIGH)
    svc.picture_of()
    assert len(svc.received("viewer")) == count + 1, "still the base layer until a keyframe"
    svc.picture_of(keyframe=True)
    assert [layer for layer, _, _ in svc.received("viewer")[-3:]] == [0, 1, 2]
    sequences = [sequence for _, _, sequence in svc.received("viewer")]
    assert sequences == [(sequences[0] + i) & 0xFFFF for i in range(len(sequences))]


def test_fewer_layers_published_keep_the_publishers_marker() -> None:
    svc = Svc()
    svc.subscribe("viewer")
    svc.picture_of(layers=2, keyframe=True)  # the publisher dropped its top layer
    assert [(layer, marker) for layer, marker, _ in svc.received("viewer")] == [(0, 0), (1, 1)]


def test_a_nack_after_skips_gets_the_packet_that_went_out() -> None:
    svc = Svc()
    svc.subscribe("low", LOW)
    for _ in range(4):
        svc.picture_of(keyframe=True)
    viewer, pc = svc.viewers["low"]
    second = pc.sent[1]
    downtrack = viewer.downtracks["TR_svc"]
    assert downtrack.retransmit(rtp.sequence_number(second), svc.now)
    # On the RTX stream (RFC 4588): its own SSRC and payload type, the original sequence
    # number, then the payload that went out.
    resent = pc.sent[-1]
    rtx_codec = next(c for c in downtrack.outgoing.codecs if c.name.lower() == "rtx")
    assert resent[1] & 0x7F == rtx_codec.payload_type
    assert rtp.ssrc(resent) == downtrack.outgoing.rtx_ssrc
    _, start, end = rtp.header_end(second)
    _, resent_start, resent_end = rtp.header_end(resent)
    assert resent[resent_start : resent_start + 2] == second[2:4]
    assert resent[resent_start + 2 : resent_end] == second[start:end]
    assert resent[4:8] == second[4:8], "the timestamp it went out with"
