"""The ``join_request`` query parameter of single peer connection joins (``/rtc/v1``).

base64url of a ``WrappedJoinRequest``, whose ``join_request`` holds a ``JoinRequest``, plain or
gzipped (LiveKit ``rtcservice.go validateInternal``; livekit-client gzips when the browser has
``CompressionStream``, the Rust SDK when that is smaller).
"""

from __future__ import annotations

import base64
import binascii
import zlib

from google.protobuf.message import DecodeError
from livekit.protocol import rtc

#: LiveKit refuses a join request larger than this once decompressed.
MAX_JOIN_REQUEST_BYTES = 1 << 20
#: gzip framing for zlib (RFC 1952).
_GZIP_WBITS = 16 + zlib.MAX_WBITS


def decode_join_request(encoded: str) -> rtc.JoinRequest:
    """The JoinRequest of a ``join_request`` parameter; ValueError (a 400 with its text) when
    it is not one."""
    try:
        padded = encoded + "=" * (-len(encoded) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("join_request is not base64url") from None
    wrapped = rtc.WrappedJoinRequest()
    try:
        wrapped.ParseFromString(raw)
    except DecodeError:
        raise ValueError("join_request is not a WrappedJoinRequest") from None
    payload = wrapped.join_request
    match wrapped.compression:
        case rtc.WrappedJoinRequest.Compression.NONE:
            pass
        case rtc.WrappedJoinRequest.Compression.GZIP:
            payload = _gunzip(payload)
        case other:
            raise ValueError(f"join_request compression {other} is not supported")
    if len(payload) > MAX_JOIN_REQUEST_BYTES:
        raise ValueError("join request too large")
    request = rtc.JoinRequest()
    try:
        request.ParseFromString(payload)
    except DecodeError:
        raise ValueError("join_request holds no valid JoinRequest") from None
    return request


def _gunzip(data: bytes) -> bytes:
    """Decompress at most one byte beyond the limit: a small bomb cannot take memory."""
    inflater = zlib.decompressobj(_GZIP_WBITS)
    try:
        out = inflater.decompress(data, MAX_JOIN_REQUEST_BYTES + 1)
    except zlib.error:
        raise ValueError("join_request is not valid gzip") from None
    if len(out) > MAX_JOIN_REQUEST_BYTES:
        raise ValueError("join request too large")
    return out
