"""The RTCP (RFC 3550, RFC 4585) the forwarding core reads and writes, on raw bytes."""

from __future__ import annotations

import struct
from collections.abc import Iterator

RTPFB = 205
PSFB = 206
FMT_PLI = 1
FMT_FIR = 4
_HEADER = struct.Struct("!BBH")


def packets(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(packet type, count/format field, body after the 4-byte header) of each packet in a
    compound RTCP packet; stops at the first malformed one."""
    offset = 0
    while offset + 4 <= len(data):
        first, packet_type, length = _HEADER.unpack_from(data, offset)
        end = offset + 4 * (length + 1)
        if first >> 6 != 2 or end > len(data):
            return
        yield packet_type, first & 0x1F, data[offset + 4 : end]
        offset = end


def keyframe_requests(data: bytes) -> Iterator[int]:
    """Media SSRCs asked for a keyframe by PLI (RFC 4585 6.3.1) or FIR (RFC 5104 4.3.1)."""
    for packet_type, fmt, body in packets(data):
        if packet_type != PSFB or len(body) < 8:
            continue
        if fmt == FMT_PLI:
            yield int.from_bytes(body[4:8], "big")
        elif fmt == FMT_FIR:
            # FIR names its targets in 8-byte FCI entries after the sender and media SSRCs.
            for index in range(8, len(body) - 7, 8):
                yield int.from_bytes(body[index : index + 4], "big")


def pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return _HEADER.pack(0x80 | FMT_PLI, PSFB, 2) + struct.pack("!II", sender_ssrc, media_ssrc)


def fir(sender_ssrc: int, media_ssrc: int, sequence: int) -> bytes:
    fci = struct.pack("!IB3x", media_ssrc, sequence & 0xFF)
    return _HEADER.pack(0x80 | FMT_FIR, PSFB, 4) + struct.pack("!II", sender_ssrc, 0) + fci
