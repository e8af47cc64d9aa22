"""How fast one subscriber's link takes what we send it: a send-side bandwidth estimator
(sans-IO), fed the packet groups its transport-cc feedback gives (``sfu/twcc.py``).

The method is Google Congestion Control's, as libwebrtc runs it on the sending side and as
LiveKit's send-side BWE watches for the same signal:

- **delay-based**: a queue building on the path shows as packets arriving further and further
  apart than they were sent. The accumulated one-way delay variation of send groups, smoothed,
  is fitted with a line over the last :data:`TRENDLINE_WINDOW` groups (libwebrtc
  ``TrendlineEstimator``); its slope, scaled, is compared with an adaptive threshold
  (``OveruseDetector``) to say overusing, underusing or normal;
- **rate control** (``AimdRateControl``): overusing cuts the estimate to 85 % of what the
  subscriber actually received; normal grows it, by 8 % a second while far from the last
  point of congestion and by about a packet per response time near it; never beyond 1.5 times
  the received rate (so an idle link cannot claim capacity it never carried: probing is how
  the estimate grows past what flows);
- **loss-based** (``SendSideBandwidthEstimation``): over 10 % loss cuts by half the loss,
  under 2 % lets the estimate grow.

A client that sends REMB instead (no transport-cc) has its REMB taken as the estimate, as
LiveKit's remote BWE does.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import Sequence

from sfu.twcc import BURST_S, Group

logger = logging.getLogger(__name__)

#: Groups the trend line is fitted over, and its smoothing and gain (libwebrtc defaults).
TRENDLINE_WINDOW = 20
SMOOTHING = 0.9
THRESHOLD_GAIN = 4.0
#: The adaptive overuse threshold, in ms of modified trend (``OveruseDetector``).
INITIAL_THRESHOLD = 12.5
THRESHOLD_RANGE = (6.0, 600.0)
K_UP, K_DOWN = 0.0087, 0.039
OVERUSE_TIME_S = 0.010
#: Rate control.
BETA = 0.85
INCREASE_PER_S = 1.08
MAX_OVER_RECEIVED = 1.5
MIN_BPS = 30_000
MAX_BPS = 100_000_000
INITIAL_BPS = 5_000_000
#: Loss thresholds of the loss-based part.
HIGH_LOSS, LOW_LOSS = 0.10, 0.02
#: How long received bytes (and losses) are averaged over.
RECEIVED_WINDOW_S = 0.5


class Usage(enum.Enum):
    NORMAL = "normal"
    OVERUSING = "overusing"
    UNDERUSING = "underusing"


class Trendline:
    """Delay trend of send groups and the overuse decision (libwebrtc ``TrendlineEstimator`` and
    ``OveruseDetector``)."""

    def __init__(self) -> None:
        self._previous: Group | None = None
        self._pending: Group | None = None
        self._first_arrival: float | None = None
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._history: deque[tuple[float, float]] = deque(maxlen=TRENDLINE_WINDOW)
        self._deltas = 0
        self._threshold = INITIAL_THRESHOLD
        self._last_update: float | None = None
        self._overuse_time = 0.0
        self._overuse_count = 0
        self._previous_trend = 0.0
        self.usage = Usage.NORMAL

    def add(self, groups: Sequence[Group]) -> Usage:
        """Groups in order of sending; a group continued from the last call is merged."""
        for group in groups:
            pending = self._pending
            if pending is not None and group[0] - pending[0] <= BURST_S:
                self._pending = (
                    pending[0],
                    max(pending[1], group[1]),
                    max(pending[2], group[2]),
                    pending[3] + group[3],
                )
                continue
            if pending is not None:
                self._complete(pending)
            self._pending = group
        return self.usage

    def _complete(self, group: Group) -> None:
        previous, self._previous = self._previous, group
        if previous is None:
            return
        send_delta = group[1] - previous[1]
        arrival_delta = group[2] - previous[2]
        if send_delta <= 0 or arrival_delta < 0:
            return  # reordered: libwebrtc drops such groups too
        if self._first_arrival is None:
            self._first_arrival = group[2]
        self._deltas = min(self._deltas + 1, 1000)
        delay_ms = (arrival_delta - send_delta) * 1000
        self._accumulated += delay_ms
        self._smoothed = SMOOTHING * self._smoothed + (1 - SMOOTHING) * self._accumulated
        self._history.append(((group[2] - self._first_arrival) * 1000, self._smoothed))
        trend = self._previous_trend
        if len(self._history) == TRENDLINE_WINDOW:
            trend = _slope(self._history) or trend
        self._detect(trend, send_delta, group[2])

    def _detect(self, trend: float, send_delta: float, arrival: float) -> None:
        modified = min(self._deltas, 60) * trend * THRESHOLD_GAIN
        if modified > self._threshold:
            self._overuse_time += send_delta
            self._overuse_count += 1
            if (
                self._overuse_time > OVERUSE_TIME_S
                and self._overuse_count > 1
                and trend >= self._previous_trend
            ):
                self._overuse_time = 0.0
                self._overuse_count = 0
                self.usage = Usage.OVERUSING
        elif modified < -self._threshold:
            self._overuse_time, self._overuse_count = 0.0, 0
            self.usage = Usage.UNDERUSING
        else:
            self._overuse_time, self._overuse_count = 0.0, 0
            self.usage = Usage.NORMAL
        self._previous_trend = trend
        self._adapt_threshold(modified, arrival)

    def _adapt_threshold(self, modified: float, now: float) -> None:
        last, self._last_update = self._last_update, now
        if last is None or abs(modified) > self._threshold + 15:
            return  # a spike (a route change) must not drag the threshold along
        k = K_DOWN if abs(modified) < self._threshold else K_UP
        elapsed_ms = min((now - last) * 1000, 100.0)
        self._threshold += k * (abs(modified) - self._threshold) * elapsed_ms
        self._threshold = min(max(self._threshold, THRESHOLD_RANGE[0]), THRESHOLD_RANGE[1])


def _slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x."""
    count = len(points)
    mean_x = sum(p[0] for p in points) / count
    mean_y = sum(p[1] for p in points) / count
    numerator = sum((x - mean_x) * (y - mean_y) for x, y in points)
    denominator = sum((x - mean_x) ** 2 for x, _ in points)
    return numerator / denominator if denominator else None


class SendSideEstimator:
    """One subscriber's available bandwidth, in bits per second.

    :param initial_bps: where the estimate starts. libwebrtc starts a call near 300 kbps and
        ramps up; an SFU's subscriber joins streams already flowing, so, as LiveKit allocates
        freely until its estimator has spoken, the estimate starts high and only congestion
        brings it down.
    """

    def __init__(self, initial_bps: float = INITIAL_BPS) -> None:
        self.trendline = Trendline()
        self.delay_based = initial_bps
        self.loss_based = initial_bps
        self._received: deque[tuple[float, int]] = deque()
        self._last_change: float | None = None
        self._last_decrease: float | None = None
        self._congested_at: float | None = None
        """The received rate when overuse was last seen (the link's capacity, roughly)."""
        self._loss: deque[tuple[float, int, int]] = deque()
        self._loss_growth_at = 0.0
        self.remb: float | None = None
        self.probing = False
        """A probe runs: what arrives now may be taken as the estimate."""
        self.probe_failed = False
        """The running probe met a queue or loss (set here, cleared by whoever probes)."""

    @property
    def last_decrease(self) -> float | None:
        """When the estimate was last cut (delay or loss)."""
        return self._last_decrease

    @property
    def estimate(self) -> float:
        if self.remb is not None:
            return self.remb
        return max(MIN_BPS, min(self.delay_based, self.loss_based))

    def received_bps(self, now: float) -> float:
        while self._received and self._received[0][0] < now - RECEIVED_WINDOW_S:
            self._received.popleft()
        total = sum(size for _, size in self._received)
        return total * 8 / RECEIVED_WINDOW_S

    def on_remb(self, bps: float) -> None:
        """A client that estimates for itself (REMB) is taken at its word."""
        self.remb = max(float(MIN_BPS), bps)

    def on_feedback(
        self, groups: Sequence[Group], received: int, lost: int, received_bytes: int, now: float
    ) -> float:
        """One transport-cc feedback's content; the new estimate."""
        self._received.append((now, received_bytes))
        received_rate = self.received_bps(now)
        usage = self.trendline.add(groups)
        self._rate_control(usage, received_rate, now)
        self._loss_control(received, lost, received_rate, now)
        return self.estimate

    def _rate_control(self, usage: Usage, received_rate: float, now: float) -> None:
        last, self._last_change = self._last_change, now
        elapsed = min(now - last, 1.0) if last is not None else 0.0
        if usage is Usage.OVERUSING:
            if self.probing:
                # The probe's own padding built the queue: the probe failed, and the estimate
                # stays where it was before it (what the probe added is not ours to cut).
                self.probe_failed = True
                return
            # One cut per round of feedback showing it, not one per group (libwebrtc waits a
            # response time between decreases).
            if self._last_decrease is None or now - self._last_decrease > 0.3:
                cut = BETA * received_rate if received_rate > 0 else BETA * self.delay_based
                self.delay_based = max(MIN_BPS, min(self.delay_based, cut))
                self._congested_at = received_rate
                self._last_decrease = now
            return
        if usage is Usage.UNDERUSING:
            return  # queues draining: hold
        before = self.delay_based
        near = self._congested_at is not None and before < 1.2 * self._congested_at
        if near:
            # Additive: about one 1200-byte packet per 200 ms response time.
            increased = before + 1200 * 8 / 0.2 * elapsed
        else:
            increased = before * math.pow(INCREASE_PER_S, elapsed)
        if received_rate > 0:
            # Growth stops at 1.5 times what arrives (libwebrtc ``ClampBitrate``): only what was
            # carried, probes included, proves capacity. The cap never lowers the estimate.
            cap = max(before, MAX_OVER_RECEIVED * received_rate + 10_000)
            increased = min(increased, cap)
            if self.probing:
                # What a probe got through without a queue building is capacity: the estimate
                # goes there at once (libwebrtc's ``ProbeBitrateEstimator``).
                increased = max(increased, received_rate)
        self.delay_based = min(increased, MAX_BPS)

    def _loss_control(self, received: int, lost: int, received_rate: float, now: float) -> None:
        self._loss.append((now, received, lost))
        while self._loss and self._loss[0][0] < now - RECEIVED_WINDOW_S:
            self._loss.popleft()
        got = sum(r for _, r, _ in self._loss)
        missed = sum(m for _, _, m in self._loss)
        if got + missed < 20:
            return  # too few packets to judge
        loss = missed / (got + missed)
        if loss > HIGH_LOSS and self.probing:
            self.probe_failed = True
            self._loss.clear()
        elif loss > HIGH_LOSS:
            if self._last_decrease is None or now - self._last_decrease > 0.3:
                # Cut from what actually arrives: while a lower layer is being switched to, the
                # loss goes on a little, and cuts compounded on the estimate would overshoot.
                base = received_rate if received_rate > 0 else self.estimate
                self.loss_based = max(MIN_BPS, min(self.loss_based, base * (1 - loss / 2)))
                self._last_decrease = now
                # The next cut is judged on losses after this one (libwebrtc measures each
                # report's interval on its own).
                self._loss.clear()
        elif loss < LOW_LOSS and self.loss_based < self.delay_based:
            # Back up by 8 % a second, as far as the delay-based estimate (libwebrtc's
            # loss-based increase), and no faster than what arrives shows room for.
            elapsed = min(now - self._loss_growth_at, 1.0) if self._loss_growth_at else 0.0
            grown = self.loss_based * math.pow(INCREASE_PER_S, elapsed)
            cap = max(self.loss_based, MAX_OVER_RECEIVED * received_rate + 10_000)
            if self.probing:
                grown = max(grown, received_rate)
            self.loss_based = min(grown, cap, self.delay_based)
        self._loss_growth_at = now
