"""Transport-wide congestion control feedback, both ways (draft-holmer-rmcat-transport-wide-cc-
extensions-01): what a subscriber's feedback says about the packets we sent it, and the
feedback we send a publisher about the packets it sent us.

Sending side (subscribers). Every packet on a subscriber transport carries the transport's
next 16-bit number in the transport-wide-cc header extension; the fan-out (``_fastsend.c``
``Sink``, this module's :class:`SentPackets` in the Python path) remembers when each went out
and its size. The subscriber's feedback (RTPFB FMT 15) reports, per number, whether the packet
arrived and when. :func:`read_feedback` matches the two and groups packets sent within 5 ms of
each other, as libwebrtc's inter-arrival filter does: the send-side estimator
(``sfu/bwe.py``) works on those groups, never on single packets.

Receiving side (publishers). :class:`FeedbackWriter` records the arrival of each numbered
packet and writes the feedback libwebrtc's own send-side estimator needs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: Packets remembered per subscriber transport (``_fastsend.c`` TWCC_RING).
TWCC_RING = 2048
#: libwebrtc groups packets sent within 5 ms (``InterArrival`` kBurstDeltaThresholdMs).
BURST_S = 0.005
#: Receive deltas count 250 us; the reference time 64 ms.
DELTA_S = 0.00025
REFERENCE_S = 0.064
FMT_TWCC = 15

#: One group: (first send, last send, last arrival, bytes).
Group = tuple[float, float, float, int]


@dataclass
class _Record:
    time: float
    size: int
    sequence: int


class SentPackets:
    """What went out under each transport-wide number: the Python twin of the C ring."""

    def __init__(self, first: int) -> None:
        self.next = first & 0xFFFF
        self._ring: list[_Record | None] = [None] * TWCC_RING

    def stamp(self, now: float, size: int) -> int:
        number = self.next
        self.next = (self.next + 1) & 0xFFFF
        self._ring[number % TWCC_RING] = _Record(now, size, number)
        return number

    def get(self, number: int) -> _Record | None:
        record = self._ring[number % TWCC_RING]
        return record if record is not None and record.sequence == number else None


def statuses(fci: bytes, count: int) -> tuple[list[int], int] | None:
    """The status symbol of each of ``count`` packets (0 not received, 1 small delta, 2 large
    or negative delta) and the offset of the deltas after the chunks; None if cut short."""
    symbols: list[int] = []
    offset = 8
    while len(symbols) < count:
        if offset + 2 > len(fci):
            return None
        (chunk,) = struct.unpack_from("!H", fci, offset)
        offset += 2
        if not chunk & 0x8000:  # run length chunk
            symbols += [(chunk >> 13) & 0x03] * min(chunk & 0x1FFF, count - len(symbols))
        elif not chunk & 0x4000:  # status vector, 14 one-bit symbols
            symbols += [(chunk >> (13 - i)) & 0x01 for i in range(14)][: count - len(symbols)]
        else:  # status vector, 7 two-bit symbols
            symbols += [(chunk >> (12 - 2 * i)) & 0x03 for i in range(7)][: count - len(symbols)]
    return symbols, offset


def read_feedback(fci: bytes, sent: SentPackets | None) -> tuple[list[Group], int, int, int]:
    """(groups, packets received, packets reported lost, bytes received) of one feedback FCI
    (after the sender and media SSRCs): the reference of ``_fastsend.Sink.twcc_feedback``."""
    groups: list[Group] = []
    received = lost = received_bytes = 0
    count = struct.unpack_from("!H", fci, 2)[0] if len(fci) >= 8 else 0
    decoded = statuses(fci, count) if sent is not None and count else None
    if sent is None or decoded is None:
        return groups, received, lost, received_bytes
    symbols, offset = decoded
    base = struct.unpack_from("!H", fci, 0)[0]
    reference = int.from_bytes(fci[4:7], "big", signed=True)
    arrival = reference * REFERENCE_S
    current: list[float | int] | None = None  # [first send, last send, last arrival, bytes]
    for index, symbol in enumerate(symbols):
        if symbol == 0:
            lost += 1
            continue
        if symbol == 1 and offset + 1 <= len(fci):
            delta = fci[offset]
            offset += 1
        elif symbol == 2 and offset + 2 <= len(fci):
            delta = struct.unpack_from("!h", fci, offset)[0]
            offset += 2
        else:
            break  # a reserved symbol, or deltas cut short
        arrival += delta * DELTA_S
        record = sent.get((base + index) & 0xFFFF)
        if record is None:
            continue
        received += 1
        received_bytes += record.size
        if current is not None and record.time - current[0] <= BURST_S:
            current[1] = max(current[1], record.time)
            current[2] = max(current[2], arrival)
            current[3] += record.size
            continue
        if current is not None:
            groups.append((current[0], current[1], current[2], int(current[3])))
        current = [record.time, record.time, arrival, record.size]
    if current is not None:
        groups.append((current[0], current[1], current[2], int(current[3])))
    return groups, received, lost, received_bytes


#: libwebrtc's receiver sends feedback every 100 ms at ordinary rates (``RemoteEstimatorProxy``).
FEEDBACK_INTERVAL_S = 0.1
#: Packets one feedback covers at most (libwebrtc caps a feedback packet the same way).
MAX_STATUSES = 0xFFFF
_FCI_HEADER = struct.Struct("!HHBHB")
#: Numbers one round of feedback reports at most (a second of video at 2,000 packets/s).
MAX_REPORTED = 2000


def write_feedback(
    base: int, arrivals: list[float | None], feedback_count: int
) -> tuple[bytes, list[float | None]]:
    """The FCI for packets numbered from ``base`` that arrived at ``arrivals`` (seconds on our
    clock, None: not received), and the arrivals it could not fit (a receive delta beyond
    what 16 bits hold starts the next feedback). Two-bit status vectors throughout."""
    first = next((a for a in arrivals if a is not None), None)
    reference_units = int(first // REFERENCE_S) if first is not None else 0
    previous = reference_units * REFERENCE_S
    symbols: list[int] = []
    deltas = bytearray()
    for arrival in arrivals:
        if arrival is None:
            symbols.append(0)
            continue
        delta = round((arrival - previous) / DELTA_S)
        if not -32768 <= delta <= 32767:
            break
        if 0 <= delta <= 255:
            symbols.append(1)
            deltas.append(delta)
        else:
            symbols.append(2)
            deltas += struct.pack("!h", delta)
        previous += delta * DELTA_S
    chunks = bytearray()
    for start in range(0, len(symbols), 7):
        group = symbols[start : start + 7]
        chunk = 0xC000
        for index, symbol in enumerate(group):
            chunk |= symbol << (12 - 2 * index)
        chunks += struct.pack("!H", chunk)
    reference = reference_units & 0xFFFFFF
    header = _FCI_HEADER.pack(
        base & 0xFFFF, len(symbols), reference >> 16, reference & 0xFFFF, feedback_count & 0xFF
    )
    return header + bytes(chunks) + bytes(deltas), arrivals[len(symbols) :]


def feedback_packet(sender_ssrc: int, media_ssrc: int, fci: bytes) -> bytes:
    """An RTPFB transport-cc packet around ``fci``, padded to 32 bits with the padding bit
    set (RFC 3550 6.4.1)."""
    body = struct.pack("!II", sender_ssrc, media_ssrc) + fci
    padding = -len(body) % 4
    if padding:
        body += bytes(padding - 1) + bytes([padding])
    first = 0x80 | (0x20 if padding else 0) | FMT_TWCC
    return struct.pack("!BBH", first, 205, len(body) // 4) + body


class FeedbackWriter:
    """The arrivals of one publisher transport's numbered packets, and the feedback about them
    (sent every :data:`FEEDBACK_INTERVAL_S`) that libwebrtc's send-side estimator needs to set
    the publisher's bitrate."""

    def __init__(self) -> None:
        self._arrivals: dict[int, float] = {}
        self._highest: int | None = None
        self._next_report: int | None = None
        """The first number the next feedback covers (unwrapped)."""
        self._count = 0

    def on_packet(self, number: int, now: float) -> None:
        if self._highest is None:
            extended = number
        else:
            delta = (number - self._highest) & 0xFFFF
            extended = self._highest + (delta - 0x10000 if delta >= 0x8000 else delta)
        if self._next_report is not None and extended < self._next_report:
            return  # already reported (as lost): too late to matter
        if self._highest is None or extended > self._highest:
            self._highest = extended
        if self._next_report is None:
            self._next_report = extended
        if len(self._arrivals) < TWCC_RING * 4:
            self._arrivals[extended] = now

    def feedback(self, sender_ssrc: int, media_ssrc: int) -> list[bytes]:
        """The RTCP packets covering everything since the last call (none if nothing came)."""
        if self._highest is None or self._next_report is None:
            return []
        packets = []
        start = self._next_report
        if self._highest - start >= MAX_REPORTED:
            # Numbers that jump far ahead (a broken or hostile sender) are not reported one by
            # one: only the newest MAX_REPORTED are, and what came before is forgotten.
            start = self._highest - MAX_REPORTED + 1
            self._arrivals = {n: t for n, t in self._arrivals.items() if n >= start}
        while start <= self._highest:
            end = min(self._highest + 1, start + 1000)
            arrivals = [self._arrivals.pop(n, None) for n in range(start, end)]
            fci, rest = write_feedback(start, arrivals, self._count)
            self._count += 1
            packets.append(feedback_packet(sender_ssrc, media_ssrc, fci))
            start = end - len(rest)
        self._next_report = start
        return packets
