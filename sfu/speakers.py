"""Who is speaking, from the ``ssrc-audio-level`` header extension (sans-IO, RFC 6464).

Each audio packet of a publisher carries the level of its audio in -dBov (0 loudest, 127
silence). Per audio track, :class:`AudioLevel` adds up, over one update interval, how long the
audio was at or above the active level and how loud it got at most; at the end of the interval
that becomes a linear level (0..1), smoothed over a few intervals, as LiveKit's
``sfu/audio/audiolevel.go`` describes it. :class:`SpeakerTracker` turns the participants' levels
into LiveKit's ``SpeakersChanged`` deltas (``rtc/room.go audioUpdateWorker``): speakers sorted
loudest first, levels quantized to eighths, and only the ones that changed, plus those that
stopped (level 0, not active).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from livekit.protocol import models

from config.schema import AudioConfig

#: The level of silence (RFC 6464).
SILENT_LEVEL = 127
#: Intervals without any packet after which a track's level is forgotten (LiveKit).
QUIET_INTERVALS_TO_RESET = 2
#: Longest stretch one packet may stand for (Opus frames are at most 60 ms): a gap in a
#: discontinuous transmission is silence, not the last packet's level.
MAX_PACKET_MS = 60.0


class AudioLevel:
    """The smoothed speech level of one audio track."""

    __slots__ = (
        "_active_ms",
        "_config",
        "_last_timestamp",
        "_loudest",
        "_observed_ms",
        "_quiet_intervals",
        "_smoothing",
        "clock_rate",
        "level",
    )

    def __init__(self, config: AudioConfig, clock_rate: int = 48000) -> None:
        self._config = config
        self.clock_rate = clock_rate
        self._smoothing = 2 / (config.smooth_intervals + 1) if config.smooth_intervals else 1.0
        self._active_ms = 0.0
        self._observed_ms = 0.0
        self._loudest = SILENT_LEVEL
        self._last_timestamp: int | None = None
        self._quiet_intervals = 0
        self.level = 0.0
        """The smoothed linear level after the last interval (0..1)."""

    def observe(self, level: int, timestamp: int) -> None:
        """One packet: its audio level and RTP timestamp (the time it stands for is the step
        from the previous packet's timestamp)."""
        duration_ms = 20.0
        if self._last_timestamp is not None:
            step = (timestamp - self._last_timestamp) & 0xFFFFFFFF
            if step < 0x80000000:
                duration_ms = min(MAX_PACKET_MS, step * 1000 / self.clock_rate)
        self._last_timestamp = timestamp
        self._observed_ms += duration_ms
        if level <= self._config.active_level:
            self._active_ms += duration_ms
            self._loudest = min(self._loudest, level)

    def close_interval(self) -> float:
        """The interval ends: returns the smoothed level (0 when below the active level)."""
        interval_ms = float(self._config.update_interval)
        linear = 0.0
        if self._observed_ms == 0:
            self._quiet_intervals += 1
            if self._quiet_intervals >= QUIET_INTERVALS_TO_RESET:
                self.level = 0.0
        else:
            self._quiet_intervals = 0
        active = min(self._active_ms, interval_ms)
        if active > 0 and active >= self._config.min_percentile / 100 * interval_ms:
            # Loudness weighted by how much of the interval was speech.
            adjusted = self._loudest - 20 * math.log10(active / interval_ms)
            linear = 10 ** (-adjusted / 20)
        self.level += (linear - self.level) * self._smoothing
        self._active_ms = self._observed_ms = 0.0
        self._loudest = SILENT_LEVEL
        return self.level if self.level >= active_threshold(self._config) else 0.0


def active_threshold(config: AudioConfig) -> float:
    """The linear level at and above which a participant is speaking."""
    return float(10 ** (-config.active_level / 20))


def quantized(level: float) -> float:
    """LiveKit sends levels in eighths, rounded up, so small wobbles are not news."""
    return math.ceil(level * 8) / 8


class SpeakerTracker:
    """The room's speakers as last sent, and the deltas to send next."""

    __slots__ = ("_sent",)

    def __init__(self) -> None:
        self._sent: dict[str, float] = {}
        """participant sid -> quantized level last sent as speaking."""

    def update(self, levels: Mapping[str, float]) -> list[models.SpeakerInfo]:
        """``levels``: participant sid -> its level this interval (0 when silent). Returns the
        changes, loudest first: new or changed speakers, then those that stopped."""
        speaking = {sid: quantized(level) for sid, level in levels.items() if level > 0}
        changed = [
            models.SpeakerInfo(sid=sid, level=level, active=True)
            for sid, level in sorted(speaking.items(), key=lambda item: -item[1])
            if self._sent.get(sid) != level
        ]
        stopped = [
            models.SpeakerInfo(sid=sid, level=0.0, active=False)
            for sid in self._sent
            if sid not in speaking
        ]
        self._sent = speaking
        return changed + stopped

    def forget(self, sids: Iterable[str]) -> None:
        for sid in sids:
            self._sent.pop(sid, None)
