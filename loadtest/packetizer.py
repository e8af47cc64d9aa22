"""RTP packets from encoded frames: VP8 (RFC 7741) and Opus (RFC 7587). Sans-IO.

Frames are split into payload chunks once per clip (:func:`split_frames`); per packet only
the 12-byte header, the constant extension block and (VP8) the 4-byte payload descriptor are
written.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from protocol import rtp

_FIXED = struct.Struct("!BBHII")
#: Largest RTP packet we send (before SRTP's 10-byte tag), below any path MTU on the way.
MAX_PACKET = 1200
#: VP8 payload descriptor with X, I and M set: a 15-bit PictureID (RFC 7741 section 4.2).
VP8_DESCRIPTOR_SIZE = 4


def extension_block(mid: str, rid: str = "", *, mid_id: int = 1, rid_id: int = 2) -> bytes:
    """The RFC 8285 block every packet of a stream carries: its ``sdes:mid`` (BUNDLE demux,
    RFC 8843) and, for a simulcast layer, its ``rtp-stream-id`` (RFC 8852)."""
    elements = [(mid_id, mid.encode())]
    if rid:
        elements.append((rid_id, rid.encode()))
    return rtp.build_extension_block(elements)


def split_frame(frame: bytes, room: int) -> list[bytes]:
    """``frame`` in the fewest chunks of at most ``room`` bytes, of nearly equal sizes (as
    libwebrtc does, so no packet is a tiny tail)."""
    if room <= 0:
        raise ValueError("no room for payload")
    count = max(1, -(-len(frame) // room))
    size, extra = divmod(len(frame), count)
    chunks = []
    offset = 0
    for index in range(count):
        end = offset + size + (1 if index < extra else 0)
        chunks.append(frame[offset:end])
        offset = end
    return chunks


def split_frames(frames: Sequence[bytes], room: int) -> list[list[bytes]]:
    return [split_frame(frame, room) for frame in frames]


class RtpWriter:
    """One RTP stream's header state: SSRC, payload type, the next sequence number.

    :param extension: the header-extension block (with its 4-byte profile header), or b"".
    """

    __slots__ = ("_extension", "_first", "octets", "packets", "payload_type", "sequence", "ssrc")

    def __init__(self, ssrc: int, payload_type: int, extension: bytes, sequence: int) -> None:
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.sequence = sequence & 0xFFFF
        self._extension = extension
        self._first = 0x90 if extension else 0x80
        self.packets = 0
        self.octets = 0

    @property
    def header_size(self) -> int:
        return rtp.RTP_HEADER_SIZE + len(self._extension)

    def packet(self, timestamp: int, marker: bool, *payload: bytes) -> bytes:
        header = _FIXED.pack(
            self._first,
            (0x80 if marker else 0) | self.payload_type,
            self.sequence,
            timestamp & 0xFFFFFFFF,
            self.ssrc,
        )
        self.sequence = (self.sequence + 1) & 0xFFFF
        packet = b"".join((header, self._extension, *payload))
        self.packets += 1
        self.octets += len(packet)
        return packet


class Vp8Packetizer:
    """VP8 frames to packets: the S bit on a frame's first packet, the marker on its last, one
    PictureID per frame, continuing across loops of the clip."""

    __slots__ = ("picture_id", "writer")

    def __init__(self, writer: RtpWriter, picture_id: int = 0) -> None:
        self.writer = writer
        self.picture_id = picture_id & 0x7FFF

    @property
    def room(self) -> int:
        return MAX_PACKET - self.writer.header_size - VP8_DESCRIPTOR_SIZE

    def frame(self, chunks: Sequence[bytes], timestamp: int) -> list[bytes]:
        pid = self.picture_id
        tail = bytes((0x80, 0x80 | (pid >> 8), pid & 0xFF))
        last = len(chunks) - 1
        packets = [
            self.writer.packet(
                timestamp, index == last, b"\x90" if index == 0 else b"\x80", tail, c
            )
            for index, c in enumerate(chunks)
        ]
        self.picture_id = (pid + 1) & 0x7FFF
        return packets


class OpusPacketizer:
    """One Opus frame per packet; the marker on the first packet of the talkspurt (RFC 3551
    section 4.1), here the stream's first."""

    __slots__ = ("_started", "writer")

    def __init__(self, writer: RtpWriter) -> None:
        self.writer = writer
        self._started = False

    @property
    def room(self) -> int:
        return MAX_PACKET - self.writer.header_size

    def frame(self, chunks: Sequence[bytes], timestamp: int) -> list[bytes]:
        marker = not self._started
        self._started = True
        return [self.writer.packet(timestamp, marker and i == 0, c) for i, c in enumerate(chunks)]


def parse_vp8_descriptor(payload: bytes) -> tuple[bool, int | None, int]:
    """(start of a partition, PictureID or None, descriptor size) of a VP8 payload
    (RFC 7741 section 4.2); ValueError when truncated."""
    if not payload:
        raise ValueError("empty VP8 payload")
    first = payload[0]
    index = 1
    picture_id = None
    if first & 0x80:
        if len(payload) < 2:
            raise ValueError("truncated VP8 descriptor")
        extension = payload[1]
        index = 2
        if extension & 0x80:
            if len(payload) < index + 1:
                raise ValueError("truncated VP8 PictureID")
            if payload[index] & 0x80:
                picture_id = ((payload[index] & 0x7F) << 8) | payload[index + 1]
                index += 2
            else:
                picture_id = payload[index] & 0x7F
                index += 1
        index += (1 if extension & 0x40 else 0) + (1 if extension & 0x30 else 0)
    if index > len(payload):
        raise ValueError("truncated VP8 descriptor")
    return bool(first & 0x10), picture_id, index
