"""The send-side estimator fed transport-cc feedback as a subscriber's libwebrtc would send it:
packets go through a simulated bottleneck (a rate and a byte queue), their arrivals are written
into real feedback packets (``sfu/twcc.py`` FeedbackWriter), read back against what was sent,
and the groups fed to the estimator. No event loop, no network."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from protocol import rtcp
from sfu.bwe import INITIAL_BPS, SendSideEstimator, Usage
from sfu.twcc import FeedbackWriter, SentPackets, read_feedback

PACKET = 1000


@dataclass
class Link:
    """A bottleneck: ``rate`` bps drained from a queue of at most ``queue`` bytes."""

    rate: float
    queue: int = 60_000
    loss: float = 0.0
    _free_at: float = 0.0
    _rng: random.Random = field(default_factory=lambda: random.Random(5))

    def carry(self, size: int, now: float) -> float | None:
        """When a packet sent at ``now`` arrives, or None when it is dropped."""
        start = max(now, self._free_at)
        if (start - now) * self.rate / 8 + size > self.queue or self._rng.random() < self.loss:
            return None
        self._free_at = start + size * 8 / self.rate
        return self._free_at + 0.02


@dataclass
class Call:
    """One subscriber transport: what we send, what its feedback says, our estimate."""

    link: Link
    estimator: SendSideEstimator = field(default_factory=SendSideEstimator)
    sent: SentPackets = field(default_factory=lambda: SentPackets(65000))
    writer: FeedbackWriter = field(default_factory=FeedbackWriter)
    now: float = 0.0
    history: list[tuple[float, float]] = field(default_factory=list)

    def run(self, seconds: float, send_bps: float, padding_bps: float = 0.0) -> None:
        """Send media (and padding) for ``seconds``; feedback every 100 ms."""
        end = self.now + seconds
        interval = PACKET * 8 / (send_bps + padding_bps)
        next_feedback = self.now + 0.1
        while self.now < end:
            number = self.sent.stamp(self.now, PACKET)
            arrival = self.link.carry(PACKET, self.now)
            if arrival is not None:
                self.writer.on_packet(number, arrival)
            self.now += interval
            if self.now >= next_feedback:
                next_feedback += 0.1
                self._feedback()

    def _feedback(self) -> None:
        for packet in self.writer.feedback(1, 2):
            (_, fmt, body), *_ = rtcp.packets(packet)
            assert fmt == 15
            groups, received, lost, received_bytes = read_feedback(body[8:], self.sent)
            self.estimator.on_feedback(groups, received, lost, received_bytes, self.now)
        self.history.append((self.now, self.estimator.estimate))


def test_an_ample_link_keeps_the_estimate() -> None:
    call = Call(Link(rate=20_000_000))
    call.run(10, send_bps=2_000_000)
    assert call.estimator.trendline.usage is not Usage.OVERUSING
    assert min(estimate for _, estimate in call.history) >= INITIAL_BPS


def test_a_bottleneck_is_found_within_two_seconds() -> None:
    call = Call(Link(rate=600_000))
    call.run(2, send_bps=1_500_000)
    assert 300_000 < call.estimator.estimate < 600_000
    cut_at = next(t for t, estimate in call.history if estimate < 600_000)
    assert cut_at < 1.5


def test_heavy_random_loss_cuts_the_estimate() -> None:
    call = Call(Link(rate=20_000_000, loss=0.3))
    call.run(3, send_bps=1_000_000)
    assert call.estimator.estimate < 1_000_000


def test_a_probe_that_gets_through_raises_the_estimate_at_once() -> None:
    call = Call(Link(rate=5_000_000))
    call.run(3, send_bps=400_000)
    call.estimator.delay_based = call.estimator.loss_based = 400_000  # as after a cut
    call.estimator.probing = True
    call.run(1, send_bps=400_000, padding_bps=1_000_000)
    assert call.estimator.estimate > 1_200_000
    assert not call.estimator.probe_failed


def test_a_probe_into_a_full_link_fails_without_cutting() -> None:
    call = Call(Link(rate=600_000))
    call.run(2, send_bps=500_000)
    before = call.estimator.estimate
    call.estimator.probing = True
    call.run(1, send_bps=500_000, padding_bps=1_000_000)
    assert call.estimator.probe_failed
    assert call.estimator.estimate >= min(before, 500_000) * 0.85


def test_remb_is_taken_at_its_word() -> None:
    estimator = SendSideEstimator()
    estimator.on_remb(750_000)
    assert estimator.estimate == 750_000


def test_numbers_that_jump_far_ahead_cost_a_bounded_feedback() -> None:
    """A publisher whose transport-wide numbers leap by half the space each packet gets no
    more than a couple of feedback packets per round, and nothing it sent is held for ever."""
    writer = FeedbackWriter()
    number = 0
    for index in range(200):
        number = (number + 32000) & 0xFFFF
        writer.on_packet(number, index * 0.001)
    packets = writer.feedback(1, 2)
    assert 1 <= len(packets) <= 3
    assert len(writer._arrivals) == 0
