"""Whether an RTP payload starts a keyframe, per video codec, and which VP9 layer a packet
belongs to (read-only views on raw bytes).

A simulcast subscriber may only move to another layer where that layer can be decoded from
scratch: the first packet of a keyframe (LiveKit switches layers only on a keyframe,
``videolayerselector``). Each test reads a few bytes of the payload descriptor; malformed or
short payloads are simply not keyframes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

KeyframeTest = Callable[[bytes, int, int], bool]


class Vp8Layout(NamedTuple):
    """Offsets of a VP8 payload descriptor's fields (:func:`vp8_layout`)."""

    picture: int
    wide: bool
    tl0: int
    keyidx: int
    payload: int


#: H.264 NAL unit types (RFC 6184 section 5.2 and H.264 table 7-1).
_H264_IDR, _H264_SPS, _H264_STAP_A, _H264_FU_A = 5, 7, 24, 28


def vp8_layout(packet: bytes | bytearray, start: int, end: int) -> Vp8Layout | None:
    """Where the VP8 payload descriptor's fields sit (RFC 7741 section 4.2): offsets of the
    picture id (and whether it is 15 bits), TL0PICIDX and KEYIDX byte (-1 when absent), and of
    the VP8 payload header after it. None for a descriptor cut short."""
    if end - start < 1:
        return None
    offset = start + 1
    picture = tl0 = keyidx = -1
    wide = False
    if packet[start] & 0x80:  # X: extended control bits follow
        if offset >= end:
            return None
        bits = packet[offset]
        offset += 1
        if bits & 0x80:  # I: picture id, 7 or 15 bits (M)
            if offset >= end:
                return None
            picture, wide = offset, bool(packet[offset] & 0x80)
            offset += 2 if wide else 1
        if bits & 0x40:  # L: TL0PICIDX
            tl0, offset = offset, offset + 1
        if bits & 0x30:  # T or K: TID, Y and KEYIDX in one byte
            keyidx = offset if bits & 0x10 else -1
            offset += 1
    if offset > end:
        return None
    return Vp8Layout(picture, wide, tl0, keyidx, offset)


def vp8_keyframe_start(packet: bytes, start: int, end: int) -> bool:
    """RFC 7741 section 4.2: the first packet of a partition (S=1, PID=0) whose VP8 payload
    header has the inverse key frame flag P clear (section 4.3)."""
    if end - start < 2 or not packet[start] & 0x10 or packet[start] & 0x07:
        return False
    layout = vp8_layout(packet, start, end)
    return layout is not None and layout.payload < end and not packet[layout.payload] & 0x01


def h264_keyframe_start(packet: bytes, start: int, end: int) -> bool:
    """RFC 6184: a single SPS or IDR NAL unit, a STAP-A holding one (section 5.7.1), or the
    start of a fragmented IDR (FU-A with S set, section 5.8). libwebrtc sends SPS and PPS in
    a STAP-A ahead of each IDR."""
    if end - start < 1:
        return False
    nal_type = packet[start] & 0x1F
    if nal_type in (_H264_IDR, _H264_SPS):
        return True
    if nal_type == _H264_FU_A:
        return (
            end - start >= 2
            and bool(packet[start + 1] & 0x80)
            and (packet[start + 1] & 0x1F in (_H264_IDR, _H264_SPS))
        )
    if nal_type == _H264_STAP_A:
        offset = start + 1
        while offset + 2 < end:
            size = int.from_bytes(packet[offset : offset + 2], "big")
            if packet[offset + 2] & 0x1F in (_H264_IDR, _H264_SPS):
                return True
            offset += 2 + size
    return False


def vp9_keyframe_start(packet: bytes, start: int, end: int) -> bool:
    """The VP9 payload descriptor (RFC 9628 section 4.2): the beginning of a frame (B) that is
    not inter-picture predicted (P clear), in the base spatial layer when layers are given."""
    if end - start < 1:
        return False
    first = packet[start]
    if first & 0x40 or not first & 0x08:  # P set, or B clear
        return False
    offset = start + 1
    if first & 0x80:  # I: picture id
        if offset >= end:
            return False
        offset += 2 if packet[offset] & 0x80 else 1
    if first & 0x20:  # L: layer indices, SID in bits 3..1
        return offset < end and (packet[offset] >> 1) & 0x07 == 0
    return True


#: Flags of :func:`vp9_layers`.
LAYER_BEGIN, LAYER_END, PICTURE_KEYFRAME = 1, 2, 4


def vp9_layers(packet: bytes, start: int, end: int) -> tuple[int, int, int] | None:
    """(spatial id, temporal id, flags) of a VP9 packet from its payload descriptor (RFC 9628
    section 4.2): LAYER_BEGIN and LAYER_END for the first and last packet of a layer frame (B,
    E), PICTURE_KEYFRAME for the first packet of a keyframe. Without layer indices (L clear)
    the stream has one layer, 0. None for a descriptor too short to read."""
    if end - start < 1:
        return None
    first = packet[start]
    flags = (LAYER_BEGIN if first & 0x08 else 0) | (LAYER_END if first & 0x04 else 0)
    offset = start + 1
    if first & 0x80:  # I: picture id, 7 or 15 bits
        if offset >= end:
            return None
        offset += 2 if packet[offset] & 0x80 else 1
    spatial = temporal = 0
    if first & 0x20:  # L: TID (3 bits), U, SID (3 bits), D
        if offset >= end:
            return None
        spatial, temporal = (packet[offset] >> 1) & 0x07, packet[offset] >> 5
    if not first & 0x40 and first & 0x08 and spatial == 0:
        flags |= PICTURE_KEYFRAME
    return spatial, temporal, flags


def av1_keyframe_start(packet: bytes, start: int, end: int) -> bool:
    """The AV1 aggregation header's N bit (AV1 RTP specification section 4.4): the first
    packet of a coded video sequence, which starts with a keyframe."""
    return end - start >= 1 and bool(packet[start] & 0x08)


_BY_MIME: dict[str, KeyframeTest] = {
    "video/vp8": vp8_keyframe_start,
    "video/h264": h264_keyframe_start,
    "video/vp9": vp9_keyframe_start,
    "video/av1": av1_keyframe_start,
}


def keyframe_test(mime: str) -> KeyframeTest | None:
    """The test for a codec's mime type, or None for codecs we cannot switch on."""
    return _BY_MIME.get(mime.lower())
