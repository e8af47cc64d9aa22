"""The per-subscriber half of the forwarding path: munger, header rewrite, protect and send.

Two implementations of one interface:

- ``sfu/_fastsend.c`` (``Sink``, ``DownTrackCore``, ``fanout``): the C fan-out. Once a
  subscriber transport has SRTP keys and a UDP path, each downtrack's packet is written,
  protected with libsrtp and queued in C, and one ``sendmmsg(2)`` per socket sends what one
  published packet fans out to; no Python object is made per out packet.
- this module's ``PySink``, ``PyDownTrackCore`` and ``py_fanout``: the reference, used when the
  C module is not built (or ``LIVEKIT_PY_PURE_FANOUT=1``), and run against the C one on the
  same packets by ``tests/unit/test_fanout.py``.

Both are sans-IO in the sense that matters here: fed ``(packet, now)``, no awaits, no queues.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from protocol import rtp
from sfu.munger import REORDER_WINDOW, RtpMunger, Vp8Munger
from sfu.twcc import Group, SentPackets, read_feedback

try:  # the optional C accelerator; without it, the reference below
    from sfu import _fastsend
except ImportError:  # pragma: no cover - depends on the build
    _fastsend = None  # type: ignore[assignment]

#: The longest plaintext packet protected (pylibsrtp's 1500-byte buffer less the trailer).
MAX_PLAINTEXT = 1500 - 144
#: Packets remembered per downtrack for NACKs (``_fastsend.c`` SENT_RING).
SENT_RING = 512
_FIXED = struct.Struct("!BBHII")


class PySink:
    """One subscriber transport's way out: ``send`` protects and sends a plaintext packet and
    says whether it went. The C ``Sink`` can also be switched to protect and send by itself
    (``set_fast``); here that is a no-op and every packet takes ``send``."""

    __slots__ = ("_twcc", "send")

    def __init__(self, send: Callable[[memoryview], bool]) -> None:
        self.send = send
        self._twcc: SentPackets | None = None

    def enable_twcc(self, first: int) -> None:
        """Stamp transport-wide numbers where downtracks have room for them."""
        if self._twcc is None:  # once: later calls leave the numbering going on
            self._twcc = SentPackets(first)

    @property
    def twcc_next(self) -> int:
        return self._twcc.next if self._twcc is not None else 0

    def stamp_twcc(self, out: bytearray, at: int, now: float, size: int) -> None:
        if self._twcc is not None:
            struct.pack_into("!H", out, at, self._twcc.stamp(now, size))

    def twcc_feedback(self, fci: bytes) -> tuple[list[Group], int, int, int]:
        return read_feedback(fci, self._twcc)

    @property
    def fast(self) -> bool:
        return False

    def set_fast(
        self,
        context: int,
        keepalive: object,
        fd: int,
        address: tuple[str, int],
        spill: Callable[[bytes, tuple[str, int]], None],
    ) -> bool:
        return False

    def clear_fast(self) -> None:
        return None

    def set_sessions(
        self,
        session_for: Callable[[Any], tuple[int, object] | None],
        send_protected: Callable[[memoryview], bool],
    ) -> None:
        """Here every packet takes ``send``, protected by the transport's one session."""
        return None


class PyDownTrackCore:
    """One published track as one subscriber receives it, without RTCP (``sfu/downtrack.py``
    ``DownTrack`` adds that). The reference for ``_fastsend.DownTrackCore``."""

    __slots__ = (
        "_buffer",
        "_extension",
        "_munger",
        "_payload_types",
        "_red_payload_type",
        "_rtx",
        "_sent",
        "_sink",
        "_ssrc_out",
        "_view",
        "_vp8",
        "bound",
        "enabled",
        "needs_keyframe",
        "octets",
        "packets",
        "padding_octets",
        "padding_packets",
        "red_accepted",
        "twcc_at",
        "vp8",
    )

    def __init__(
        self,
        sink: PySink,
        ssrc_out: int,
        clock_rate: int,
        first_sequence: int,
        first_timestamp: int,
        extension: bytes,
        payload_types: dict[int, int],
        red_payload_type: int,
    ) -> None:
        self._sink = sink
        self._ssrc_out = ssrc_out
        self._munger = RtpMunger(clock_rate, first_sequence, first_timestamp)
        self._extension = extension
        self._payload_types = payload_types
        self._red_payload_type = red_payload_type
        self._buffer = bytearray(MAX_PLAINTEXT)
        self._view = memoryview(self._buffer)
        self._sent: list[tuple[int, int, int, bool] | None] = [None] * SENT_RING
        """Our sequence number's slot -> (ours, the publisher's, its SSRC, marker bit)."""
        self.enabled = True
        self.bound = True
        """False until the subscriber's answer has this track (sfu/tracks.py)."""
        self.red_accepted = True
        self.vp8 = False
        """Munge VP8 payload descriptors (``sfu/munger.py`` Vp8Munger)."""
        self._vp8 = Vp8Munger()
        self.needs_keyframe = False
        self.packets = 0
        self.octets = 0
        self.padding_packets = 0
        self.padding_octets = 0
        self.twcc_at = -1
        """Offset of the transport-wide number in the extension block; -1: not negotiated."""
        self._rtx: list[int] | None = None
        """[SSRC, payload type, next sequence number] of the RTX stream, when negotiated."""

    def set_rtx(self, ssrc: int, payload_type: int, first_sequence: int) -> None:
        """Retransmissions and padding go on this RTX stream (RFC 4588); -1: none."""
        if not -1 <= payload_type <= 127:
            raise ValueError("payload types are 0-127 (-1: no RTX)")
        self._rtx = [ssrc, payload_type, first_sequence & 0xFFFF] if payload_type >= 0 else None

    def _next_rtx_sequence(self) -> int:
        assert self._rtx is not None
        sequence = self._rtx[2]
        self._rtx[2] = (sequence + 1) & 0xFFFF
        return sequence

    def _finish_header(self, size: int, now: float) -> None:
        if 0 <= self.twcc_at and self.twcc_at + 2 <= len(self._extension):
            self._sink.stamp_twcc(self._buffer, rtp.RTP_HEADER_SIZE + self.twcc_at, now, size)

    def pad(self, count: int, padding: int, now: float) -> int:
        """Send ``count`` padding-only packets on the RTX stream (probing); how many went."""
        if not (0 <= count <= 256 and 1 <= padding <= 255):
            raise ValueError("0-256 packets of 1-255 padding bytes")
        sent = 0
        while sent < count:
            if not self.bound or self._rtx is None or self._munger.source is None:
                break
            ssrc, payload_type, _ = self._rtx
            size = rtp.RTP_HEADER_SIZE + len(self._extension) + padding
            _FIXED.pack_into(
                self._buffer,
                0,
                0xA0 | (0x10 if self._extension else 0),
                payload_type,
                self._next_rtx_sequence(),
                self._munger.last_timestamp & 0xFFFFFFFF,
                ssrc,
            )
            self._buffer[12 : 12 + len(self._extension)] = self._extension
            self._finish_header(size, now)
            start = size - padding
            self._buffer[start:size] = bytes(padding - 1) + bytes([padding])
            if not self._sink.send(self._view[:size]):
                break
            sent += 1
            self.padding_packets += 1
            self.padding_octets += padding
        return sent

    def forward(
        self,
        packet: bytes,
        payload_start: int,
        payload_end: int,
        sequence: int,
        timestamp: int,
        ssrc: int,
        now: float,
        marker: bool = False,
        out_sequence: int = -1,
    ) -> bool:
        """Send one packet (with the marker bit set when ``marker``; under ``out_sequence``
        when it is a retransmission); True when it was the first sent and a keyframe is due."""
        if not (self.enabled and self.bound):
            return False
        payload_type = packet[1] & 0x7F
        if payload_type == self._red_payload_type and not self.red_accepted:
            try:  # a subscriber that refused RED gets primary blocks only
                payload_type, payload_start, payload_end = rtp.red_primary(
                    packet, payload_start, payload_end
                )
            except ValueError:
                return False
        switching = ssrc != self._munger.source
        translated = self._munger.translate(sequence, timestamp, ssrc, now)
        if switching:
            self._vp8.source_changed()
        if translated is None:
            return False
        if out_sequence >= 0:
            translated = (out_sequence & 0xFFFF, translated[1])
        sent_marker = bool(packet[1] & 0x80) or marker
        self._sent[translated[0] % SENT_RING] = (translated[0], sequence, ssrc, sent_marker)
        # A retransmission goes on the RTX stream when there is one: its own numbering, the
        # original sequence number first in the payload (RFC 4588 4).
        rtx = self._rtx if out_sequence >= 0 else None
        header_size = rtp.RTP_HEADER_SIZE + len(self._extension) + (2 if rtx else 0)
        size = header_size + payload_end - payload_start
        if size > len(self._buffer):
            return False
        payload_type_out = rtx[1] if rtx else self._payload_types.get(payload_type, payload_type)
        if marker:
            payload_type_out |= 0x80  # OR-ed with the original's marker bit
        rtp.write_header(
            self._buffer,
            packet,
            payload_type_out=payload_type_out,
            sequence=self._next_rtx_sequence() if rtx else translated[0],
            timestamp_out=translated[1],
            ssrc_out=rtx[0] if rtx else self._ssrc_out,
            extension_block=self._extension,
            payload_start=payload_start,
            payload_end=payload_start,
        )
        if rtx:
            struct.pack_into("!H", self._buffer, header_size - 2, translated[0])
        self._buffer[header_size:size] = packet[payload_start:payload_end]
        self._finish_header(size, now)
        if self.vp8:
            newest = not rtx and self._munger.last_sequence == translated[0]
            self._vp8.munge(self._buffer, header_size, size, newest)
        if not self._sink.send(self._view[:size]):
            return False
        self.packets += 1
        self.octets += payload_end - payload_start
        if self.needs_keyframe:
            self.needs_keyframe = False
            return True
        return False

    def skip(self, sequence: int, ssrc: int) -> None:
        self._munger.skip(sequence, ssrc)

    def expect_source(self, ssrc: int, timestamp_in: int, timestamp_out: int) -> None:
        self._munger.expect_source(ssrc, timestamp_in, timestamp_out)

    def sent(self, sequence: int) -> tuple[int, int, bool] | None:
        """(the publisher's sequence number, its SSRC, the marker bit we sent) behind one of
        our sequence numbers, if remembered."""
        record = self._sent[sequence % SENT_RING] if 0 <= sequence <= 0xFFFF else None
        if record is None or record[0] != sequence:
            return None
        return record[1], record[2], record[3]

    def translate_timestamp(self, timestamp: int) -> int:
        return self._munger.translate_timestamp(timestamp)


def py_fanout(
    packet: bytes,
    payload_start: int,
    payload_end: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    now: float,
    downtracks: Mapping[Any, PyDownTrackCore],
    marker: bool = False,
) -> bool:
    """Forward one packet to every downtrack; True when one of them wants a keyframe."""
    keyframe = False
    for downtrack in downtracks.values():
        if downtrack.forward(
            packet, payload_start, payload_end, sequence, timestamp, ssrc, now, marker
        ):
            keyframe = True
    return keyframe


def py_skip(sequence: int, ssrc: int, downtracks: Mapping[Any, PyDownTrackCore]) -> None:
    """A packet these downtracks do not get: their numbering closes over it."""
    for downtrack in downtracks.values():
        downtrack.skip(sequence, ssrc)


#: Whether the C fan-out is in use (the build has it and the environment did not turn it off).
ACCELERATED = _fastsend is not None and os.environ.get("LIVEKIT_PY_PURE_FANOUT", "") != "1"

if TYPE_CHECKING or not ACCELERATED:
    Sink = PySink
    DownTrackCore = PyDownTrackCore
    fanout = py_fanout
    skip = py_skip
    extension_u16 = rtp.extension_u16
else:
    Sink = _fastsend.Sink
    DownTrackCore = _fastsend.DownTrackCore
    fanout = _fastsend.fanout
    skip = _fastsend.skip
    extension_u16 = _fastsend.extension_u16


def log_implementation(log: logging.Logger) -> None:
    """Say at start-up which fan-out forwards: without the C module it costs about twice the
    CPU per packet (benchmarks/RESULTS.md), which an operator should know."""
    if ACCELERATED:
        log.info("forwarding: C fan-out (sfu/_fastsend)")
    elif _fastsend is not None:
        log.info("forwarding: pure-Python fan-out (LIVEKIT_PY_PURE_FANOUT=1)")
    else:
        log.warning(
            "forwarding: pure-Python fan-out, the C module sfu/_fastsend is not built "
            "(install a C compiler and reinstall); each forwarded packet costs about twice the CPU"
        )


if _fastsend is not None:
    # One source for the constants both paths use: the C twin is told this module's.
    _fastsend.set_limits(REORDER_WINDOW, MAX_PLAINTEXT)

#: Packets the Python path's SRTP protection refused (too long, or libsrtp said no).
_python_protect_failures = 0


def count_protect_failure() -> None:
    global _python_protect_failures
    _python_protect_failures += 1


def protect_failures() -> int:
    """Packets dropped because SRTP protection refused them, by either path, since start."""
    from_c = _fastsend.protect_failures() if _fastsend is not None else 0
    return _python_protect_failures + from_c


def configure_srtp(protect_address: int, max_plaintext: int = MAX_PLAINTEXT) -> None:
    """Tell the C fan-out where libsrtp's ``srtp_protect`` is (``sfu/rtc_adapter.py``)."""
    if ACCELERATED:
        _fastsend.set_srtp_protect(protect_address, max_plaintext)
