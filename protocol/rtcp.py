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


SR = 200
RR = 201
FMT_NACK = 1
FMT_REMB = 15


_SENDER_REPORT = struct.Struct("!BBHIQIII")


def sender_report(ssrc: int, ntp: int, rtp_timestamp: int, packets: int, octets: int) -> bytes:
    """A Sender Report without report blocks (RFC 3550 6.4.1); the packet and octet counts
    wrap modulo 2^32, as the RFC says they do."""
    return _SENDER_REPORT.pack(
        0x80,
        SR,
        6,
        ssrc,
        ntp & 0xFFFFFFFFFFFFFFFF,
        rtp_timestamp & 0xFFFFFFFF,
        packets & 0xFFFFFFFF,
        octets & 0xFFFFFFFF,
    )


def sender_reports(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(sender SSRC, NTP timestamp as 64 bits, RTP timestamp) of each SR (RFC 3550 6.4.1)."""
    for packet_type, _, body in packets(data):
        if packet_type == SR and len(body) >= 20:
            ssrc, ntp, rtp_ts = struct.unpack_from("!IQI", body)
            yield ssrc, ntp, rtp_ts


def receiver_report(
    sender_ssrc: int,
    media_ssrc: int,
    *,
    fraction_lost: int,
    cumulative_lost: int,
    highest_sequence: int,
    jitter: int,
    last_sr: int,
    delay_since_last_sr: int,
) -> bytes:
    """An RR with one report block (RFC 3550 6.4.2)."""
    block = struct.pack(
        "!IIIIII",
        media_ssrc,
        ((fraction_lost & 0xFF) << 24) | (cumulative_lost & 0xFFFFFF),
        highest_sequence & 0xFFFFFFFF,
        jitter & 0xFFFFFFFF,
        last_sr & 0xFFFFFFFF,
        delay_since_last_sr & 0xFFFFFFFF,
    )
    return _HEADER.pack(0x81, RR, 7) + struct.pack("!I", sender_ssrc) + block


def remb(sender_ssrc: int, bitrate: int, ssrcs: list[int]) -> bytes:
    """Receiver Estimated Maximum Bitrate (draft-alvestrand-rmcat-remb-03 section 2.2)."""
    exponent = 0
    mantissa = max(0, bitrate)
    while mantissa >= 1 << 18:
        mantissa >>= 1
        exponent += 1
    body = struct.pack("!II4sB", sender_ssrc, 0, b"REMB", len(ssrcs))
    body += struct.pack("!I", (exponent << 18) | mantissa)[1:]
    body += b"".join(struct.pack("!I", ssrc) for ssrc in ssrcs)
    return _HEADER.pack(0x80 | FMT_REMB, PSFB, len(body) // 4) + body


def remb_estimate(packet_type: int, fmt: int, body: bytes) -> tuple[int, tuple[int, ...]] | None:
    """(bitrate in bps, the SSRCs it covers) when one packet of a compound (as
    :func:`packets` yields it) is a REMB (draft-alvestrand-rmcat-remb-03 section 2.2)."""
    if packet_type != PSFB or fmt != FMT_REMB or len(body) < 16 or body[8:12] != b"REMB":
        return None
    count = body[12]
    exponent = body[13] >> 2
    mantissa = ((body[13] & 0x03) << 16) | (body[14] << 8) | body[15]
    ssrcs = tuple(
        int.from_bytes(body[index : index + 4], "big")
        for index in range(16, min(len(body), 16 + 4 * count) - 3, 4)
    )
    return mantissa << exponent, ssrcs


def remb_estimates(data: bytes) -> Iterator[tuple[int, tuple[int, ...]]]:
    """Each REMB of a compound packet: (bitrate in bps, the SSRCs it covers)."""
    for packet_type, fmt, body in packets(data):
        found = remb_estimate(packet_type, fmt, body)
        if found is not None:
            yield found


def nacked_sequences(data: bytes) -> Iterator[tuple[int, int]]:
    """(media SSRC, lost sequence number) for each Generic NACK entry (RFC 4585 6.2.1)."""
    for packet_type, fmt, body in packets(data):
        if packet_type != RTPFB or fmt != FMT_NACK or len(body) < 8:
            continue
        media_ssrc = int.from_bytes(body[4:8], "big")
        for index in range(8, len(body) - 3, 4):
            pid, bitmask = struct.unpack_from("!HH", body, index)
            yield media_ssrc, pid
            for bit in range(16):
                if bitmask & (1 << bit):
                    yield media_ssrc, (pid + bit + 1) & 0xFFFF


def nack(sender_ssrc: int, media_ssrc: int, sequences: list[int]) -> bytes:
    """A Generic NACK (RFC 4585 6.2.1) covering ``sequences`` (16-bit values, ascending)."""
    fci = bytearray()
    index = 0
    while index < len(sequences):
        pid, bitmask = sequences[index], 0
        index += 1
        while index < len(sequences) and 0 < (sequences[index] - pid) & 0xFFFF <= 16:
            bitmask |= 1 << (((sequences[index] - pid) & 0xFFFF) - 1)
            index += 1
        fci += struct.pack("!HH", pid, bitmask)
    body = struct.pack("!II", sender_ssrc, media_ssrc) + bytes(fci)
    return _HEADER.pack(0x80 | FMT_NACK, RTPFB, len(body) // 4) + body


def report_blocks(data: bytes) -> Iterator[tuple[int, int, int, int, int, int]]:
    """(source SSRC, fraction lost, cumulative lost, jitter, LSR, DLSR) of every report block
    in the SRs and RRs of a compound packet (RFC 3550 6.4.1/6.4.2)."""
    for packet_type, count, body in packets(data):
        if packet_type == RR:
            offset = 4
        elif packet_type == SR:
            offset = 24
        else:
            continue
        for index in range(count):
            start = offset + 24 * index
            if start + 24 > len(body):
                break
            ssrc, loss, _highest, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", body, start)
            cumulative = loss & 0xFFFFFF
            if cumulative & 0x800000:  # signed 24-bit
                cumulative -= 1 << 24
            yield ssrc, loss >> 24, cumulative, jitter, lsr, dlsr
