"""The parsers against what libwebrtc really sends: RTP and RTCP recorded from the Python
SDK's publishers and subscribers (``tests/vectors/capture.py`` made the file)."""

from __future__ import annotations

import struct
from collections import defaultdict
from pathlib import Path

import pytest

from protocol import rtcp, rtp

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "libwebrtc_session.bin"
OPUS, RED, VP8 = 111, 63, 96
#: NTP seconds of 2026-01-01 and 2036-01-01 (RFC 5905 era 0).
NTP_2026, NTP_2036 = 3_976_214_400, 4_291_747_200


def _records() -> tuple[list[bytes], list[bytes]]:
    data = VECTORS.read_bytes()
    rtp_packets: list[bytes] = []
    rtcp_packets: list[bytes] = []
    offset = 0
    while offset < len(data):
        kind, length = struct.unpack_from("!BH", data, offset)
        offset += 3
        (rtp_packets if kind == 0 else rtcp_packets).append(data[offset : offset + length])
        offset += length
    return rtp_packets, rtcp_packets


def test_rtp_headers_extensions_and_sequences() -> None:
    packets, _ = _records()
    assert len(packets) >= 100
    by_ssrc: dict[int, list[int]] = defaultdict(list)
    for packet in packets:
        extension, header, end = rtp.header_end(packet)
        padding = packet[-1] if packet[0] & 0x20 else 0  # RFC 3550 5.1: the last octet counts it
        assert rtp.RTP_HEADER_SIZE <= header <= end == len(packet) - padding
        assert extension >= 0, "libwebrtc always sends header extensions"
        elements = dict(rtp.extensions(packet, extension, header))
        assert elements, "the one-byte extension block parses into elements"
        assert all(1 <= ident <= 14 for ident in elements)
        by_ssrc[rtp.ssrc(packet)].append(rtp.sequence_number(packet))
        assert rtp.payload_type(packet) in (OPUS, RED, VP8)
    assert len(by_ssrc) == 2, "one audio and one video stream"
    for sequences in by_ssrc.values():
        first = sequences[0]
        assert [(s - first) & 0xFFFF for s in sequences] == list(range(len(sequences)))


def test_red_packets_hold_an_opus_primary() -> None:
    """libwebrtc also sends padding-only packets (bandwidth probes) with the RED payload type
    and no payload at all: those hold no block, and the parser says so."""
    packets, _ = _records()
    red = [p for p in packets if rtp.payload_type(p) == RED]
    assert red, "the SDK's audio uses RED once the server answers with it"
    probes = 0
    for packet in red:
        _, header, end = rtp.header_end(packet)
        if header == end:
            probes += 1
            with pytest.raises(ValueError, match="without a primary block"):
                rtp.red_primary(packet, header, end)
            continue
        payload_type, start, stop = rtp.red_primary(packet, header, end)
        assert payload_type == OPUS and header < start <= stop == end
    assert probes < len(red), "some RED packets carry audio"


def test_rtcp_compounds_parse_into_reports_and_feedback() -> None:
    _, packets = _records()
    kinds: set[tuple[int, int]] = set()
    for compound in packets:
        parsed = list(rtcp.packets(compound))
        assert parsed, "every compound holds packets"
        kinds.update((packet_type, count) for packet_type, count, _ in parsed)
    assert {200, 201, 202} <= {packet_type for packet_type, _ in kinds}, kinds
    reports = [r for compound in packets for r in rtcp.sender_reports(compound)]
    assert reports and all(NTP_2026 <= ntp >> 32 <= NTP_2036 for _, ntp, _ in reports)
    blocks = [b for compound in packets for b in rtcp.report_blocks(compound)]
    assert blocks and all(fraction <= 255 for _, fraction, *_ in blocks)
    assert any(True for compound in packets for _ in rtcp.keyframe_requests(compound))
