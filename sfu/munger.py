"""Sequence number and timestamp translation for one downtrack (LiveKit ``rtpmunger.go``).

Sans-IO: fed ``(sequence, timestamp, ssrc, now)`` of each publisher packet, it returns the
numbers to write for the subscriber, or None to drop. Inside, numbers are extended (unwrapped)
to 64 bits; they are wrapped to 16/32 bits only when written. Outgoing sequence numbers stay
contiguous and timestamps continuous when the publisher's SSRC changes (a restart or a layer
switch), because libsrtp refuses to protect a sequence number that goes backwards beyond its
replay window on the same SSRC.
"""

from __future__ import annotations

from protocol.keyframes import vp8_layout

#: Packets older than this many sequence numbers behind the newest are dropped, not forwarded.
REORDER_WINDOW = 1000


class Unwrapper:
    """Extends a wrapping counter of ``bits`` bits to a monotonic-ish 64-bit value."""

    __slots__ = ("_half", "_highest", "_modulus")

    def __init__(self, bits: int) -> None:
        self._modulus = 1 << bits
        self._half = 1 << (bits - 1)
        self._highest: int | None = None

    def unwrap(self, value: int) -> int:
        if self._highest is None:
            self._highest = value
            return value
        # The candidate nearest to the highest value seen (RFC 3550 A.1 style).
        delta = (value - self._highest) % self._modulus
        if delta >= self._half:
            delta -= self._modulus
        extended = self._highest + delta
        if extended > self._highest:
            self._highest = extended
        return extended

    def reset(self) -> None:
        self._highest = None


class RtpMunger:
    """Translates one publisher stream into one subscriber's numbering.

    :param clock_rate: RTP clock of the codec, to bridge timestamp gaps by wall-clock time.
    :param first_sequence: the subscriber's first sequence number (random in production).
    :param first_timestamp: the subscriber's first timestamp.
    """

    __slots__ = (
        "_clock_rate",
        "_expected",
        "_highest_in",
        "_last_now",
        "_last_out_seq",
        "_last_out_ts",
        "_seq",
        "_seq_offset",
        "_source",
        "_source_floor",
        "_ts",
        "_ts_offset",
    )

    def __init__(self, clock_rate: int, first_sequence: int = 0, first_timestamp: int = 0) -> None:
        self._clock_rate = clock_rate
        self._expected: tuple[int, int, int] | None = None
        self._seq = Unwrapper(16)
        self._ts = Unwrapper(32)
        self._source: int | None = None
        self._source_floor = 0
        self._seq_offset = 0
        self._ts_offset = 0
        self._highest_in = 0
        self._last_out_seq = first_sequence - 1
        self._last_out_ts = first_timestamp
        self._last_now = 0.0

    def translate(
        self, sequence: int, timestamp: int, ssrc: int, now: float
    ) -> tuple[int, int] | None:
        """(sequence, timestamp) for the subscriber, wrapped to 16/32 bits; None to drop."""
        if ssrc != self._source:
            self._switch_source(sequence, timestamp, ssrc, now)
        ext_seq = self._seq.unwrap(sequence)
        ext_ts = self._ts.unwrap(timestamp)
        if ext_seq > self._highest_in:
            self._highest_in = ext_seq
        elif ext_seq <= self._highest_in - REORDER_WINDOW or ext_seq < self._source_floor:
            # Older than the window, or from before this source took over: a late packet of
            # a layer's previous frame would reuse sequence numbers the last source had sent.
            return None
        out_seq = ext_seq + self._seq_offset
        out_ts = ext_ts + self._ts_offset
        if out_seq > self._last_out_seq:
            self._last_out_seq = out_seq
            self._last_out_ts = out_ts
            self._last_now = now
        return out_seq & 0xFFFF, out_ts & 0xFFFFFFFF

    def skip(self, sequence: int, ssrc: int) -> None:
        """A packet of the current source this subscriber does not get (a layer above the
        one it wants): later packets close over it, so the subscriber sees no gap to NACK.
        Only the newest packet counts; a late one changes nothing."""
        if ssrc != self._source:
            return
        ext_seq = self._seq.unwrap(sequence)
        if ext_seq > self._highest_in:
            self._highest_in = ext_seq
            self._seq_offset -= 1

    def expect_source(self, ssrc: int, timestamp_in: int, timestamp_out: int) -> None:
        """When the stream switches to ``ssrc``, its packet stamped ``timestamp_in`` should go
        out stamped ``timestamp_out`` (LiveKit maps a new layer onto the old one's timeline
        with both layers' Sender Reports)."""
        self._expected = (ssrc, timestamp_in, timestamp_out)

    @property
    def source(self) -> int | None:
        return self._source

    @property
    def last_timestamp(self) -> int:
        """The timestamp of the newest packet sent (unwrapped)."""
        return self._last_out_ts

    @property
    def last_sequence(self) -> int:
        """The newest sequence number sent, wrapped to 16 bits."""
        return self._last_out_seq & 0xFFFF

    def translate_timestamp(self, timestamp: int) -> int:
        """A publisher timestamp (from its Sender Report) in the subscriber's timeline."""
        return (timestamp + self._ts_offset) & 0xFFFFFFFF

    def _switch_source(self, sequence: int, timestamp: int, ssrc: int, now: float) -> None:
        """Continue the outgoing numbering: next sequence number, and a timestamp advanced by
        the wall-clock time since the last forwarded packet (at least one tick)."""
        self._source = ssrc
        self._seq.reset()
        self._ts.reset()
        elapsed = now - self._last_now if self._last_now else 0.0
        next_ts = self._last_out_ts + max(1, int(elapsed * self._clock_rate))
        self._seq_offset = self._last_out_seq + 1 - sequence
        self._ts_offset = next_ts - timestamp
        if self._expected is not None and self._expected[0] == ssrc:
            # Sender Reports map the new stream onto the old one's timeline: this packet goes
            # out at the expected time (taken nearest the wall clock's estimate), when that
            # does not run backwards and stays within a second of the estimate.
            _, expected_in, expected_out = self._expected
            wanted = (expected_out + timestamp - expected_in) & 0xFFFFFFFF
            drift = (wanted - next_ts) & 0xFFFFFFFF
            drift = drift - (1 << 32) if drift >= 1 << 31 else drift
            if next_ts + drift > self._last_out_ts and -self._clock_rate < drift < self._clock_rate:
                self._ts_offset = next_ts + drift - timestamp
        self._expected = None
        self._highest_in = sequence
        self._source_floor = sequence


class Vp8Munger:
    """VP8 payload descriptor munging for one downtrack (RFC 7741 4.2; LiveKit
    ``codecmunger/vp8.go``): picture id, TL0PICIDX and KEYIDX continue across a change of
    source as sequence numbers do, so the decoder sees one stream. The reference for the C
    twin in ``_fastsend.c`` (``munge_vp8``)."""

    __slots__ = ("_last", "_offsets", "_rebase", "_seen")

    def __init__(self) -> None:
        self._seen = False
        self._rebase = False
        self._offsets = (0, 0, 0)
        self._last = (0, 0, 0)
        """(picture id, TL0PICIDX, KEYIDX) of the newest packet sent."""

    def source_changed(self) -> None:
        """The next packet starts a new source: its values continue from the last sent."""
        self._rebase = self._seen

    def munge(self, buffer: bytearray, start: int, end: int, newest: bool) -> None:
        """Rewrite the descriptor at ``buffer[start:end]`` in place."""
        if end - start < 2 or not buffer[start] & 0x80:
            return  # no extended control bits: nothing to munge
        layout = vp8_layout(buffer, start, end)
        if layout is None:
            return
        picture_at, wide, tl0_at, keyidx_at, _ = layout
        picture = 0
        if picture_at >= 0:
            high = buffer[picture_at] & 0x7F
            picture = (high << 8 | buffer[picture_at + 1]) if wide else high
        tl0 = buffer[tl0_at] if tl0_at >= 0 else 0
        keyidx = buffer[keyidx_at] & 0x1F if keyidx_at >= 0 else 0
        if self._rebase:
            last = self._last
            self._offsets = (
                (last[0] + 1 - picture) & 0xFFFF,
                (last[1] + 1 - tl0) & 0xFF,
                (last[2] + 1 - keyidx) & 0xFF,
            )
            self._rebase = False
        picture = (picture + self._offsets[0]) & (0x7FFF if wide else 0x7F)
        tl0 = (tl0 + self._offsets[1]) & 0xFF
        keyidx = (keyidx + self._offsets[2]) & 0x1F
        if picture_at >= 0 and wide:
            buffer[picture_at], buffer[picture_at + 1] = 0x80 | picture >> 8, picture & 0xFF
        elif picture_at >= 0:
            buffer[picture_at] = picture
        if tl0_at >= 0:
            buffer[tl0_at] = tl0
        if keyidx_at >= 0:
            buffer[keyidx_at] = (buffer[keyidx_at] & 0xE0) | keyidx
        if newest:
            self._seen = True
            self._last = (picture, tl0, keyidx)
