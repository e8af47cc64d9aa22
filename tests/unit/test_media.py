"""The forwarding core without a network: fan-out, rewrite, keyframe requests, RTCP."""

from __future__ import annotations

import struct

from protocol import rtcp, rtp
from protocol.sdp_media import Codec, OutgoingTrack
from sfu.media import KEYFRAME_REQUEST_INTERVAL_S, MID_EXTENSION_ID, DownTrack, TrackReceiver

VP8 = Codec(96, "video/VP8", 90000)


class Sink:
    """Collects what a downtrack sends; reports every packet as sent."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def __call__(self, data: bytes) -> bool:
        self.packets.append(data)
        return True


def _packet(seq: int, pt: int = 96, ssrc: int = 5555) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 3000, ssrc) + b"frame-data"


def _outgoing(mid: str, ssrc: int) -> OutgoingTrack:
    return OutgoingTrack("video", mid, (Codec(100, "video/VP8", 90000),), (), "PA|TR", "TR", ssrc)


def test_fan_out_rewrites_per_subscriber_and_requests_one_keyframe() -> None:
    upstream: list[bytes] = []
    receiver = TrackReceiver(VP8, 5555, upstream.append)
    sent = {"a": Sink(), "b": Sink()}
    for name, mid, ssrc in (("a", "1", 111), ("b", "3", 222)):
        receiver.downtracks[name] = DownTrack(
            _outgoing(mid, ssrc), sent[name], lambda: receiver.request_keyframe(0.0)
        )
    for seq in (10, 11, 12):
        receiver.on_packet(_packet(seq), now=0.0)
    receiver.on_packet(_packet(13, pt=97), now=0.0)  # RTX is not forwarded as media
    assert len(upstream) == 1, "both downtracks asked, one PLI within the throttle"
    assert list(rtcp.keyframe_requests(upstream[0])) == [5555]
    for name, ssrc, mid_value in (("a", 111, b"1"), ("b", 222, b"3")):
        packets = sent[name].packets
        assert [rtp.ssrc(p) for p in packets] == [ssrc] * 3
        assert {rtp.payload_type(p) for p in packets} == {100}
        sequences = [rtp.sequence_number(p) for p in packets]
        assert sequences == [sequences[0], sequences[0] + 1, sequences[0] + 2]
        extension, header, end = rtp.header_end(packets[0])
        assert rtp.extensions(packets[0], extension, header) == [(MID_EXTENSION_ID, mid_value)]
        assert packets[0][header:end] == b"frame-data"


def test_keyframe_requests_are_throttled() -> None:
    upstream: list[bytes] = []
    receiver = TrackReceiver(VP8, 5555, upstream.append)
    for now in (0.0, 0.1, KEYFRAME_REQUEST_INTERVAL_S - 0.01, KEYFRAME_REQUEST_INTERVAL_S + 0.01):
        receiver.request_keyframe(now)
    assert len(upstream) == 2


def test_disabled_downtrack_sends_nothing() -> None:
    receiver = TrackReceiver(VP8, 5555, lambda _: None)
    sent = Sink()
    downtrack = DownTrack(_outgoing("1", 1), sent, lambda: None)
    downtrack.enabled = False
    receiver.downtracks["x"] = downtrack
    receiver.on_packet(_packet(1), now=0.0)
    assert sent.packets == []


def test_rtcp_parsing_and_building() -> None:
    compound = rtcp.pli(1, 42) + rtcp.fir(1, 43, 7)
    assert list(rtcp.keyframe_requests(compound)) == [42, 43]
    assert [(t, f) for t, f, _ in rtcp.packets(compound)] == [(206, 1), (206, 4)]
    assert list(rtcp.keyframe_requests(b"\x80\xce\x00\x09garbage")) == []
    assert list(rtcp.packets(b"")) == []
