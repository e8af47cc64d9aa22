"""RTP header access and rewriting, and the sequence/timestamp munger, without a network."""

from __future__ import annotations

import struct

import pytest

from protocol import rtp
from sfu.munger import REORDER_WINDOW, RtpMunger, Unwrapper


def _packet(seq: int, ts: int, ssrc: int, *, ext: bytes = b"", payload: bytes = b"opus") -> bytes:
    first = 0x80 | (0x10 if ext else 0)
    return struct.pack("!BBHII", first, 0x80 | 111, seq, ts, ssrc) + ext + payload


MID_BLOCK = rtp.build_extension_block([(4, b"7"), (1, b"\x30")])


def test_header_fields_and_extensions() -> None:
    packet = _packet(65535, 123456, 0xDEADBEEF, ext=MID_BLOCK)
    assert (rtp.payload_type(packet), rtp.sequence_number(packet)) == (111, 65535)
    assert (rtp.timestamp(packet), rtp.ssrc(packet)) == (123456, 0xDEADBEEF)
    extension, header, end = rtp.header_end(packet)
    assert extension == 12 and packet[header:end] == b"opus"
    assert rtp.extensions(packet, extension, header) == [(4, b"7"), (1, b"\x30")]
    assert not rtp.is_rtcp(packet)
    assert rtp.is_rtcp(bytes([0x81, 200, 0, 6]) + b"\x00" * 24)


@pytest.mark.parametrize(
    "data", [b"", b"\x80" * 11, b"\x40" + b"\x00" * 15, b"\x90" + b"\x00" * 13]
)
def test_malformed_packets_are_value_errors(data: bytes) -> None:
    with pytest.raises(ValueError):
        rtp.header_end(data)


def test_write_header_rewrites_for_the_subscriber() -> None:
    source = _packet(10, 1000, 1, ext=MID_BLOCK, payload=b"payload")
    _, header, end = rtp.header_end(source)
    out = bytearray(1500)
    block = rtp.build_extension_block([(9, b"2")])
    size = rtp.write_header(
        out,
        source,
        payload_type_out=96,
        sequence=70000,
        timestamp_out=2**32 + 5,
        ssrc_out=42,
        extension_block=block,
        payload_start=header,
        payload_end=end,
    )
    packet = bytes(out[:size])
    assert rtp.payload_type(packet) == 96 and packet[1] & 0x80  # marker kept
    assert (rtp.sequence_number(packet), rtp.timestamp(packet), rtp.ssrc(packet)) == (4464, 5, 42)
    extension, header_out, end_out = rtp.header_end(packet)
    assert rtp.extensions(packet, extension, header_out) == [(9, b"2")]
    assert packet[header_out:end_out] == b"payload"


def test_two_byte_extension_block_when_ids_do_not_fit() -> None:
    block = rtp.build_extension_block([(20, b"x")])
    packet = _packet(1, 1, 1, ext=block)
    extension, header, _ = rtp.header_end(packet)
    assert rtp.extensions(packet, extension, header) == [(20, b"x")]


def test_unwrapper() -> None:
    unwrap = Unwrapper(16)
    assert [unwrap.unwrap(v) for v in (65534, 65535, 0, 1, 65535)] == [
        65534,
        65535,
        65536,
        65537,
        65535,
    ]


def test_munger_contiguous_across_wrap_and_reorder() -> None:
    munger = RtpMunger(48000, first_sequence=100, first_timestamp=5000)
    out = [
        munger.translate(s, t, 7, 0.0) for s, t in ((65534, 0), (65535, 960), (1, 2880), (0, 1920))
    ]
    assert [o[0] for o in out if o] == [100, 101, 103, 102]
    assert [o[1] for o in out if o] == [5001, 5961, 7881, 6921]
    assert munger.translate(65535 - REORDER_WINDOW, 0, 7, 0.0) is None


def test_munger_continues_across_publisher_restart() -> None:
    munger = RtpMunger(90000, first_sequence=1, first_timestamp=0)
    for index in range(5):
        munger.translate(1000 + index, 9000 * index, 1, index * 0.1)
    # New SSRC with unrelated numbers half a second later: sequence continues, timestamp jumps
    # by the wall-clock gap.
    seq, ts = munger.translate(7, 123, 2, 0.9) or (0, 0)
    assert seq == 6
    assert ts == 9000 * 4 + 1 + int(0.5 * 90000)
    assert munger.translate(8, 123 + 3000, 2, 0.93) == (7, ts + 3000)
