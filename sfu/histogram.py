"""Fixed-bucket histograms in plain integers, and the node's stream quality statistics.

The media path observes values into these (once per quality window, never per packet); the
metrics endpoint (``server/metrics.py``) exports them at scrape time under LiveKit's names.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from sfu.quality import Window


def exponential_range(low: float, high: float, count: int) -> tuple[float, ...]:
    """Go's ``prometheus.ExponentialBucketsRange``: ``count`` buckets from ``low`` to ``high``."""
    factor = (high / low) ** (1 / (count - 1))
    return tuple(low * factor**index for index in range(count))


class Histogram:
    """A fixed-bucket histogram in plain integers, exported at scrape time."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # Bucket ``le=b`` holds values <= b: the first bound not below the value.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts per upper bound, ``+Inf`` last (the exposition format)."""
        result, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            result.append((_le(bound), float(running)))
        return result


def _le(bound: float) -> str:
    """A bucket bound as Go writes it: "+Inf", "60", "268.2695795279726"."""
    if bound == float("inf"):
        return "+Inf"
    return str(int(bound)) if bound == int(bound) else repr(float(bound))


#: LiveKit's buckets: loss 0..100 %, jitter 1 ms..1 s (in µs), RTT 50 ms..10 s, MOS 1..4.5.
LOSS_PERCENT_BUCKETS = (0.0, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 40.0, 70.0, 100.0)
JITTER_US_BUCKETS = exponential_range(1000, 1_000_000, 10)
RTT_MS_BUCKETS = exponential_range(50, 10_000, 10)
SCORE_BUCKETS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5)
RATING_BUCKETS = (0.0, 1.0, 2.0)


class StreamQuality:
    """Loss, jitter and round trip of one direction and kind of stream, per window."""

    def __init__(self) -> None:
        self.lost = 0
        self.loss_percent = Histogram(LOSS_PERCENT_BUCKETS)
        self.jitter_us = Histogram(JITTER_US_BUCKETS)
        self.rtt_ms = Histogram(RTT_MS_BUCKETS)


class QualityStats:
    """``(direction, kind)`` -> :class:`StreamQuality`, and the participants' scores."""

    def __init__(self) -> None:
        self.streams: dict[tuple[str, str], StreamQuality] = {}
        self.scores = Histogram(SCORE_BUCKETS)
        self.ratings = Histogram(RATING_BUCKETS)

    def record(self, direction: str, kind: str, window: Window) -> None:
        """One stream's window: ``direction`` is incoming (from a publisher) or outgoing."""
        if not window.packets:
            return
        stream = self.streams.get((direction, kind))
        if stream is None:
            stream = self.streams[direction, kind] = StreamQuality()
        stream.lost += window.lost
        stream.loss_percent.observe(100 * window.lost / (window.packets + window.lost))
        if window.jitter_ms:
            stream.jitter_us.observe(window.jitter_ms * 1000)
        if window.rtt_ms:
            stream.rtt_ms.observe(window.rtt_ms)

    def record_participant(self, mos: float, rating: int) -> None:
        self.scores.observe(mos)
        self.ratings.observe(rating)
