"""RTP (RFC 3550) header access on raw bytes, and the per-subscriber header rewrite.

Nothing here allocates a packet object: readers take the datagram, the writer fills a
preallocated ``bytearray`` (style: in-place views on the hot path, aiortc's ``RtpPacket`` is for
endpoints).
"""

from __future__ import annotations

import struct

_FIXED = struct.Struct("!BBHII")
RTP_HEADER_SIZE = 12
#: RFC 8285 one-byte and two-byte header-extension profiles.
ONE_BYTE_PROFILE = 0xBEDE
TWO_BYTE_PROFILE = 0x1000


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 section 4: RTCP packet types 192-223 sit where RTP has marker+payload type."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def payload_type(data: bytes) -> int:
    return data[1] & 0x7F


def sequence_number(data: bytes) -> int:
    return int.from_bytes(data[2:4], "big")


def timestamp(data: bytes) -> int:
    return int.from_bytes(data[4:8], "big")


def ssrc(data: bytes) -> int:
    return int.from_bytes(data[8:12], "big")


def header_end(data: bytes) -> tuple[int, int, int]:
    """(offset of the extension block or -1, end of the header, end of the payload).

    Raises ValueError for a packet shorter than its header says (RFC 3550 5.1).
    """
    if len(data) < RTP_HEADER_SIZE or data[0] >> 6 != 2:
        raise ValueError("not an RTP packet")
    offset = RTP_HEADER_SIZE + 4 * (data[0] & 0x0F)
    extension = -1
    if data[0] & 0x10:
        if len(data) < offset + 4:
            raise ValueError("truncated RTP header extension")
        extension = offset
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    end = len(data)
    if data[0] & 0x20 and end > offset:
        end -= data[-1]  # RFC 3550 padding: the last octet counts the padding bytes
    if offset > end:
        raise ValueError("RTP header longer than the packet")
    return extension, offset, end


def extension_u16(data: bytes, ident: int) -> int:
    """The 16-bit value of extension element ``ident`` (the transport-wide sequence number),
    or -1 when the packet has none. Read per received packet: no list is built."""
    if len(data) < RTP_HEADER_SIZE or not data[0] & 0x10:
        return -1
    start = RTP_HEADER_SIZE + 4 * (data[0] & 0x0F)
    if len(data) < start + 4:
        return -1
    one_byte = data[start] == 0xBE and data[start + 1] == 0xDE
    if not one_byte and (data[start] != 0x10 or data[start + 1] & 0xF0):
        return -1
    end = min(len(data), start + 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big"))
    index = start + 4
    while index < end:
        first = data[index]
        if first == 0:  # padding
            index += 1
            continue
        if one_byte:
            found, length, index = first >> 4, (first & 0x0F) + 1, index + 1
            if found == 15:
                return -1
        elif index + 1 < end:
            found, length, index = first, data[index + 1], index + 2
        else:
            return -1
        if found == ident:
            fits = length == 2 and index + 2 <= len(data)
            return int.from_bytes(data[index : index + 2], "big") if fits else -1
        index += length
    return -1


def extensions(data: bytes, extension: int, header: int) -> list[tuple[int, bytes]]:
    """The (id, value) elements of an RFC 8285 extension block (one- or two-byte form)."""
    profile = int.from_bytes(data[extension : extension + 2], "big")
    found: list[tuple[int, bytes]] = []
    index = extension + 4
    while index < header:
        if profile == ONE_BYTE_PROFILE:
            first = data[index]
            if first == 0:  # padding
                index += 1
                continue
            ident, length = first >> 4, (first & 0x0F) + 1
            if ident == 15:
                break
            index += 1
        elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
            ident = data[index]
            if ident == 0:
                index += 1
                continue
            length = data[index + 1]
            index += 2
        else:
            break
        found.append((ident, bytes(data[index : index + length])))
        index += length
    return found


def write_header(
    out: bytearray,
    source: bytes,
    *,
    payload_type_out: int,
    sequence: int,
    timestamp_out: int,
    ssrc_out: int,
    extension_block: bytes,
    payload_start: int,
    payload_end: int,
) -> int:
    """Write the subscriber's packet into ``out``: our header, ``extension_block`` (already in
    the subscriber's extension ids, or empty) and the publisher's payload. Returns its length.

    CSRCs and padding are dropped: an SFU forwards one source per SSRC, and SRTP adds its own
    trailer.
    """
    marker = source[1] & 0x80
    first = 0x80 | (0x10 if extension_block else 0)
    _FIXED.pack_into(
        out,
        0,
        first,
        marker | payload_type_out,
        sequence & 0xFFFF,
        timestamp_out & 0xFFFFFFFF,
        ssrc_out,
    )
    offset = RTP_HEADER_SIZE
    if extension_block:
        out[offset : offset + len(extension_block)] = extension_block
        offset += len(extension_block)
    size = payload_end - payload_start
    out[offset : offset + size] = source[payload_start:payload_end]
    return offset + size


def build_extension_block(elements: list[tuple[int, bytes]]) -> bytes:
    """An RFC 8285 one-byte block (two-byte when an id or value does not fit), padded to 32
    bits."""
    one_byte = all(1 <= i <= 14 and 1 <= len(v) <= 16 for i, v in elements)
    body = bytearray()
    for ident, value in elements:
        if one_byte:
            body.append((ident << 4) | (len(value) - 1))
        else:
            body += bytes((ident, len(value)))
        body += value
    body += b"\x00" * (-len(body) % 4)
    profile = ONE_BYTE_PROFILE if one_byte else TWO_BYTE_PROFILE
    return struct.pack("!HH", profile, len(body) // 4) + bytes(body)


def red_primary(data: bytes, payload_start: int, payload_end: int) -> tuple[int, int, int]:
    """(payload type, start, end) of the primary block of a RED payload (RFC 2198 section 3):
    redundant blocks have 4-byte headers (F=1, PT, timestamp offset, length), the primary a
    1-byte header (F=0, PT) and comes last. Raises ValueError when malformed."""
    index = payload_start
    redundant = 0
    while index < payload_end and data[index] & 0x80:
        if index + 4 > payload_end:
            raise ValueError("truncated RED block header")
        redundant += ((data[index + 2] & 0x03) << 8) | data[index + 3]
        index += 4
    if index >= payload_end:
        raise ValueError("RED payload without a primary block")
    primary_type = data[index] & 0x7F
    start = index + 1 + redundant
    if start > payload_end:
        raise ValueError("RED block lengths exceed the payload")
    return primary_type, start, payload_end
