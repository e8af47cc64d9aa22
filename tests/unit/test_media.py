"""The forwarding core without a network: fan-out, rewrite, keyframe requests, RTCP."""

from __future__ import annotations

import struct
import time

import pytest

from protocol import rtcp, rtp
from protocol.sdp_media import Codec, OutgoingTrack
from sfu.buffer import RembEstimator
from sfu.downtrack import MID_EXTENSION_ID, MID_EXTENSION_URI, DownTrack
from sfu.receiver import KEYFRAME_REQUEST_INTERVAL_S, TrackReceiver

VP8 = Codec(96, "video/VP8", 90000)


def _drop(_: bytes) -> None:
    return None


class Sink:
    """Collects what a downtrack sends; reports every packet as sent."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def __call__(self, data: memoryview) -> bool:
        self.packets.append(bytes(data))  # the downtrack reuses its buffer
        return True


def _packet(seq: int, pt: int = 96, ssrc: int = 5555) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 3000, ssrc) + b"frame-data"


def _outgoing(mid: str, ssrc: int, mid_extension: int = MID_EXTENSION_ID) -> OutgoingTrack:
    extensions = ((mid_extension, MID_EXTENSION_URI),) if mid_extension else ()
    codecs = (Codec(100, "video/VP8", 90000),)
    return OutgoingTrack("video", mid, codecs, extensions, "PA|TR", "TR", ssrc)


@pytest.mark.parametrize("mid_extension", [MID_EXTENSION_ID, 9, 0])
def test_mid_is_sent_with_the_subscribers_extension_id(mid_extension: int) -> None:
    """A single-PC client numbers the extension in its own offer; a section without it gets
    no extension block (libwebrtc then demultiplexes by the announced SSRC)."""
    receiver = TrackReceiver(VP8, 5555, _drop)
    sink = Sink()
    receiver.downtracks["s"] = DownTrack(_outgoing("4", 111, mid_extension), sink, _drop, receiver)
    receiver.on_packet(_packet(10), now=0.0)
    (sent,) = sink.packets
    extension, header, _ = rtp.header_end(sent)
    if mid_extension:
        assert list(rtp.extensions(sent, extension, header)) == [(mid_extension, b"4")]
    else:
        assert extension < 0 and header == rtp.RTP_HEADER_SIZE


def test_fan_out_rewrites_per_subscriber_and_requests_one_keyframe() -> None:
    upstream: list[bytes] = []
    receiver = TrackReceiver(VP8, 5555, upstream.append)
    sent = {"a": Sink(), "b": Sink()}
    for name, mid, ssrc in (("a", "1", 111), ("b", "3", 222)):
        receiver.downtracks[name] = DownTrack(_outgoing(mid, ssrc), sent[name], _drop, receiver)
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


def test_keyframe_requests_are_throttled_and_deferred() -> None:
    upstream: list[bytes] = []
    receiver = TrackReceiver(VP8, 5555, upstream.append)
    for now in (0.0, 0.1, KEYFRAME_REQUEST_INTERVAL_S - 0.01, KEYFRAME_REQUEST_INTERVAL_S + 0.01):
        receiver.request_keyframe(now)
    assert len(upstream) == 2
    receiver.request_keyframe(KEYFRAME_REQUEST_INTERVAL_S + 0.2)  # inside the window: deferred
    assert len(upstream) == 2
    receiver.on_packet(_packet(1), now=KEYFRAME_REQUEST_INTERVAL_S + 0.3)
    assert len(upstream) == 2, "still inside the window"
    receiver.on_packet(_packet(2), now=2 * KEYFRAME_REQUEST_INTERVAL_S + 0.02)
    assert len(upstream) == 3, "sent once the window has passed"


def test_disabled_downtrack_sends_nothing() -> None:
    receiver = TrackReceiver(VP8, 5555, lambda _: None)
    sent = Sink()
    downtrack = DownTrack(_outgoing("1", 1), sent, _drop, receiver)
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


def test_subscriber_nack_answered_from_the_cache() -> None:
    receiver = TrackReceiver(VP8, 5555, _drop)
    sink = Sink()
    downtrack = DownTrack(_outgoing("1", 9), sink, _drop, receiver)
    receiver.downtracks["s"] = downtrack
    for seq in (100, 101, 102):
        receiver.on_packet(_packet(seq), now=0.0)
    lost = rtp.sequence_number(sink.packets[1])
    assert downtrack.retransmit(lost, now=0.1)
    again = sink.packets[-1]
    assert (rtp.sequence_number(again), rtp.ssrc(again)) == (lost, 9)
    assert again == sink.packets[1], "the same packet, byte for byte"
    assert not downtrack.retransmit((lost + 1000) & 0xFFFF, now=0.1)


def test_rtx_unwrapped_and_gaps_nacked_upstream() -> None:
    upstream: list[bytes] = []
    receiver = TrackReceiver(VP8, 5555, upstream.append, rtx=(97, 6666))
    sink = Sink()
    receiver.downtracks["s"] = DownTrack(_outgoing("1", 9), sink, _drop, receiver)
    receiver.on_packet(_packet(10), now=0.0)
    receiver.on_packet(_packet(13), now=0.0)  # 11 and 12 lost
    nacks = [list(rtcp.nacked_sequences(p)) for p in upstream if p[1] == rtcp.RTPFB]
    assert nacks == [[(5555, 11), (5555, 12)]]
    rtx = (
        struct.pack("!BBHII", 0x80, 97, 500, 11 * 3000, 6666)
        + struct.pack("!H", 11)
        + b"frame-data"
    )
    receiver.on_packet(rtx, now=0.1)
    repaired = sink.packets[-1]
    assert rtp.timestamp(repaired) - rtp.timestamp(sink.packets[0]) == 3000
    _, header, end = rtp.header_end(repaired)
    assert repaired[header:end] == b"frame-data"
    assert 11 not in [s & 0xFFFF for s in receiver.stats.missing]


def test_tick_sends_receiver_report_and_remb() -> None:
    upstream: list[bytes] = []
    receiver = TrackReceiver(VP8, 5555, upstream.append)
    for seq in (1, 2, 4):
        receiver.on_packet(_packet(seq), now=0.0)
    upstream.clear()
    receiver.tick(1.0)
    compound, retry = upstream  # the report, then a second NACK for the still-missing 3
    assert [s for _, s in rtcp.nacked_sequences(retry)] == [3]
    kinds = [(t, f) for t, f, _ in rtcp.packets(compound)]
    assert kinds == [(rtcp.RR, 1), (rtcp.PSFB, rtcp.FMT_REMB)]
    _, _, block = next(rtcp.packets(compound))
    media_ssrc, loss_word, highest = struct.unpack_from("!III", block, 4)
    assert media_ssrc == 5555 and highest == 4
    assert loss_word & 0xFFFFFF == 1  # one packet lost in total
    assert b"REMB" in compound


def test_sender_report_translated_per_subscriber() -> None:
    receiver = TrackReceiver(VP8, 5555, _drop)
    reports: list[bytes] = []
    downtrack = DownTrack(_outgoing("1", 9), Sink(), reports.append, receiver)
    receiver.downtracks["s"] = downtrack
    receiver.on_packet(_packet(10), now=0.0)
    sink_ts = rtp.timestamp(struct.pack("!BBHII", 0x80, 96, 0, 0, 0))
    receiver.on_sender_report(ntp=123 << 32, rtp_timestamp=10 * 3000, now=0.5)
    (report,) = reports
    ssrc, ntp, rtp_ts, packets, _ = struct.unpack_from("!IQIII", report, 4)
    assert (ssrc, ntp, packets) == (9, 123 << 32, 1)
    assert rtp_ts != sink_ts
    assert receiver.stats.last_sr_ntp == 123 << 32


def test_nack_builder_round_trips() -> None:
    sequences = [65534, 65535, 0, 5, 40]
    packet = rtcp.nack(1, 77, sequences)
    assert [s for _, s in rtcp.nacked_sequences(packet)] == sequences


def test_remb_estimator_grows_holds_and_cuts() -> None:
    estimator = RembEstimator(minimum=100, maximum=10_000, start=1_000)
    assert estimator.update(0, 10) == 1_500, "grows from its own value, not what arrived"
    assert estimator.update(10, 1_400) == 1_500, "holds between 2 and 10 % loss"
    assert estimator.update(64, 1_200) == 1_050, "25 % loss: cut below what arrived"
    for _ in range(20):
        estimator.update(0, 0)
    assert estimator.estimate == 10_000
    assert estimator.update(255, 0) == 100


def test_subscriber_receiver_report_gives_loss_jitter_and_rtt() -> None:
    receiver = TrackReceiver(VP8, 5555, _drop)
    reports: list[bytes] = []
    downtrack = DownTrack(_outgoing("1", 9), Sink(), reports.append, receiver)
    receiver.downtracks["s"] = downtrack
    receiver.on_packet(_packet(10), now=0.0)
    ntp = (1000 << 32) | (1 << 31)
    receiver.on_sender_report(ntp=ntp, rtp_timestamp=30000, now=0.0)
    last_sr = (ntp >> 16) & 0xFFFFFFFF
    rr = rtcp.receiver_report(
        77,
        9,
        fraction_lost=64,
        cumulative_lost=3,
        highest_sequence=10,
        jitter=900,
        last_sr=last_sr,
        delay_since_last_sr=0,
    )
    ((ssrc, fraction, lost, jitter, lsr, dlsr),) = list(rtcp.report_blocks(rr))
    assert (ssrc, fraction, lost, jitter, lsr, dlsr) == (9, 64, 3, 900, last_sr, 0)
    downtrack.on_receiver_report(fraction, jitter, lsr, dlsr, now=time.monotonic() + 0.05)
    assert downtrack.fraction_lost == 0.25
    assert downtrack.jitter == 0.01
    assert downtrack.rtt is not None and 0.04 < downtrack.rtt < 1.0


def test_fir_when_only_fir_was_negotiated() -> None:
    upstream: list[bytes] = []
    fir_only = Codec(96, "video/VP8", 90000, rtcp_fb=("ccm fir", "nack"))
    TrackReceiver(fir_only, 5555, upstream.append).request_keyframe(0.0)
    ((packet_type, fmt, _),) = list(rtcp.packets(upstream[0]))
    assert (packet_type, fmt) == (rtcp.PSFB, rtcp.FMT_FIR)
    assert list(rtcp.keyframe_requests(upstream[0])) == [5555]


OPUS = Codec(111, "audio/opus", 48000, 2)
RED = Codec(63, "audio/red", 48000, 2, fmtp="111/111")


def _red_packet(seq: int) -> bytes:
    redundant, primary = b"old-frame", b"new-frame"
    # One redundant block (F=1, PT 111, offset 960, length 9), then the primary header.
    header = struct.pack("!BHB", 0x80 | 111, (960 << 2) | (len(redundant) >> 8), len(redundant))
    payload = header + bytes([111]) + redundant + primary
    return struct.pack("!BBHII", 0x80, 63, seq, seq * 960, 4444) + payload


def test_red_primary_block() -> None:
    packet = _red_packet(5)
    _, header, end = rtp.header_end(packet)
    pt, start, stop = rtp.red_primary(packet, header, end)
    assert (pt, packet[start:stop]) == (111, b"new-frame")
    with pytest.raises(ValueError):
        rtp.red_primary(packet, header, header + 3)


def test_red_passes_through_or_is_reduced_to_its_primary() -> None:
    receiver = TrackReceiver(OPUS, 4444, _drop, red=RED)
    outgoing = OutgoingTrack("audio", "1", (RED, OPUS), (), "PA|TR", "TR", ssrc=7)
    keeps, refuses = Sink(), Sink()
    receiver.downtracks["keeps"] = DownTrack(outgoing, keeps, _drop, receiver)
    refusing = DownTrack(outgoing, refuses, _drop, receiver)
    refusing.red_accepted = False
    receiver.downtracks["refuses"] = refusing
    receiver.on_packet(_red_packet(1), now=0.0)
    (red_out,) = keeps.packets
    assert rtp.payload_type(red_out) == 63
    (plain,) = refuses.packets
    _, header, end = rtp.header_end(plain)
    assert (rtp.payload_type(plain), plain[header:end]) == (111, b"new-frame")


def test_sender_report_counts_wrap_modulo_2_32() -> None:
    """RFC 3550 6.4.1: the sender's packet and octet counts wrap; a long run must not fail to
    pack its report (the load tester's 2 Mbps layer passes 2^32 octets in under 5 hours)."""
    report = rtcp.sender_report(7, 1 << 40, (1 << 32) + 5, (1 << 32) + 3, (5 << 32) + 9)
    assert list(rtcp.sender_reports(report)) == [(7, 1 << 40, 5)]
    assert report[20:28] == (3).to_bytes(4, "big") + (9).to_bytes(4, "big")


def test_padding_only_probes_are_not_forwarded_and_leave_no_gap() -> None:
    """libwebrtc probes bandwidth with padding-only packets on the media SSRC when it has no
    RTX; LiveKit drops them, and the subscriber's numbering closes over them."""
    receiver = TrackReceiver(VP8, 5555, _drop)
    sink = Sink()
    receiver.downtracks["a"] = DownTrack(_outgoing("1", 111), sink, _drop, receiver)
    receiver.on_packet(_packet(10), now=0.0)
    for seq in (11, 12):  # RFC 3550 padding: P set, the whole payload is padding
        header = struct.pack("!BBHII", 0xA0, 96, seq, seq * 3000, 5555)
        receiver.on_packet(header + bytes(223) + bytes([224]), now=0.0)
    receiver.on_packet(_packet(13), now=0.0)
    sequences = [rtp.sequence_number(p) for p in sink.packets]
    assert len(sequences) == 2 and sequences[1] == (sequences[0] + 1) & 0xFFFF
    assert receiver.stats.received == 4, "the probes still count upstream (no NACK for them)"
