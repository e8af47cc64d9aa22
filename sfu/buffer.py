"""Receive-side bookkeeping for one published stream (LiveKit ``sfu/buffer``), sans-IO:
the packet cache that answers subscriber NACKs, loss statistics for Receiver Reports, losses
to NACK upstream, the incoming bitrate, and the publisher's last Sender Report."""

from __future__ import annotations

from sfu.munger import Unwrapper

#: Oldest loss still worth asking the publisher to retransmit, in sequence numbers.
NACK_HORIZON = 200
#: A lost packet is NACKed at most this many times.
NACK_ATTEMPTS = 3


class RembEstimator:
    """The bitrate we let a publisher send (REMB), loss-driven like the loss half of Google
    congestion control (draft-ietf-rmcat-gcc-02 section 6): grow while losses stay under 2 %,
    hold between 2 and 10 %, cut in proportion above. Growth is from the previous estimate, not
    from what arrived, so an encoder that undershoots (static content, a busy CPU) is not
    pushed down."""

    __slots__ = ("estimate", "maximum", "minimum")

    def __init__(self, *, minimum: int, maximum: int, start: int) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.estimate = start

    def update(self, fraction_lost: int, received_bps: int) -> int:
        """``fraction_lost`` in 1/256 since the last update (an RR's field)."""
        if fraction_lost > 26:  # over 10 %
            reduced = received_bps * (1 - fraction_lost / 512)
            self.estimate = max(self.minimum, int(min(self.estimate, reduced)))
        elif fraction_lost < 5:  # under 2 %
            self.estimate = min(self.maximum, int(self.estimate * 1.5))
        return self.estimate


class PacketCache:
    """The most recent packets by 16-bit sequence number, in a power-of-two ring."""

    __slots__ = ("_mask", "_packets", "_sequences")

    def __init__(self, capacity: int) -> None:
        size = 1 << max(1, (capacity - 1).bit_length())
        self._mask = size - 1
        self._packets: list[bytes | None] = [None] * size
        self._sequences = [-1] * size

    def __len__(self) -> int:
        """The capacity (a power of two)."""
        return self._mask + 1

    def put(self, sequence: int, packet: bytes) -> None:
        slot = sequence & self._mask
        self._packets[slot] = packet
        self._sequences[slot] = sequence

    def get(self, sequence: int) -> bytes | None:
        slot = sequence & self._mask
        return self._packets[slot] if self._sequences[slot] == sequence else None


class ReceiveStats:
    """Sequence accounting of one incoming stream (RFC 3550 A.3) plus pending NACKs."""

    __slots__ = (
        "_base",
        "_bytes",
        "_bytes_taken",
        "_expected_prior",
        "_received_at_base",
        "_received_prior",
        "_unwrap",
        "highest",
        "last_sr_arrival",
        "last_sr_ntp",
        "last_sr_rtp",
        "missing",
        "received",
    )

    def __init__(self) -> None:
        self._unwrap = Unwrapper(16)
        self._base: int | None = None
        self.highest = -1
        self.received = 0
        """Packets received since the start, across restarts (for metrics)."""
        self._received_at_base = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._bytes = 0
        self._bytes_taken = 0
        self.missing: dict[int, int] = {}
        """Extended sequence number -> NACKs sent for it so far."""
        self.last_sr_ntp = 0
        self.last_sr_rtp = 0
        self.last_sr_arrival = 0.0

    def on_packet(self, sequence: int, size: int) -> None:
        extended = self._unwrap.unwrap(sequence)
        if self._base is None:
            self._base = extended
            self.highest = extended - 1
        self.received += 1
        self._bytes += size
        if extended > self.highest:
            for lost in range(max(self.highest + 1, extended - NACK_HORIZON), extended):
                self.missing[lost] = 0
            self.highest = extended
        else:
            self.missing.pop(extended, None)

    def restart(self) -> None:
        """Another stream replaces this one (a simulcast layer switch): sequence accounting
        and the Sender Report start afresh, the packet and byte totals carry on."""
        self._unwrap.reset()
        self._base = None
        self.highest = -1
        self._received_at_base = self.received
        self._expected_prior = 0
        self._received_prior = 0
        self.missing.clear()
        self.last_sr_ntp = 0
        self.last_sr_rtp = 0
        self.last_sr_arrival = 0.0

    def nacks_due(self) -> list[int]:
        """16-bit sequence numbers to NACK now; each loss is asked for a few times, then given
        up, as are losses older than the horizon."""
        due = []
        for extended in list(self.missing):
            attempts = self.missing[extended]
            if attempts >= NACK_ATTEMPTS or extended < self.highest - NACK_HORIZON:
                del self.missing[extended]
                continue
            self.missing[extended] = attempts + 1
            due.append(extended & 0xFFFF)
        return due

    def report(self) -> tuple[int, int, int]:
        """(fraction lost since the last report in 1/256, cumulative lost, extended highest
        sequence number) for a Receiver Report block (RFC 3550 A.3)."""
        if self._base is None:
            return 0, 0, 0
        expected = self.highest - self._base + 1
        received = self.received - self._received_at_base
        lost = max(0, expected - received)
        expected_interval = expected - self._expected_prior
        lost_interval = expected_interval - (received - self._received_prior)
        self._expected_prior, self._received_prior = expected, received
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = (lost_interval << 8) // expected_interval
        return min(fraction, 255), min(lost, 0x7FFFFF), self.highest

    def cumulative_lost(self) -> int:
        """Packets missing from the current stream so far (RFC 3550 A.3; may shrink when
        late packets arrive)."""
        if self._base is None:
            return 0
        return max(0, self.highest - self._base + 1 - (self.received - self._received_at_base))

    def take_bytes(self) -> int:
        """Bytes received since the last call (for the incoming bitrate)."""
        taken, self._bytes = self._bytes, 0
        self._bytes_taken += taken
        return taken

    @property
    def total_bytes(self) -> int:
        """Payload bytes received since the start (for metrics; summed once a tick, not per
        packet)."""
        return self._bytes_taken + self._bytes
