"""Active speakers without a network: levels from RFC 6464 values over an interval, smoothing,
and the SpeakersChanged deltas (sfu/speakers.py)."""

from __future__ import annotations

from config.schema import AudioConfig
from sfu.speakers import AudioLevel, SpeakerTracker, active_threshold, quantized

CONFIG = AudioConfig()  # LiveKit's defaults: 35 dBov, 40 %, 400 ms, 2 intervals
FRAME = 960  # 20 ms of Opus at 48 kHz


def _interval(level: AudioLevel, dbov: int, packets: int = 20, start: int = 0) -> float:
    for index in range(packets):
        level.observe(dbov, start + index * FRAME)
    return level.close_interval()


def test_loud_speech_is_active_and_silence_is_not() -> None:
    loud = AudioLevel(CONFIG)
    first = _interval(loud, 10)
    assert first > active_threshold(CONFIG)
    second = _interval(loud, 10, start=20 * FRAME)
    assert second > first, "smoothing climbs towards the level"
    assert second <= 10 ** (-10 / 20) + 1e-9
    quiet = AudioLevel(CONFIG)
    assert _interval(quiet, 127) == 0.0
    assert _interval(quiet, 50) == 0.0, "below the active level"


def test_brief_speech_does_not_count() -> None:
    level = AudioLevel(CONFIG)
    for index in range(20):  # 3 of 20 frames loud: 15 % < 40 %
        level.observe(5 if index < 3 else 127, index * FRAME)
    assert level.close_interval() == 0.0


def test_level_fades_and_is_forgotten_without_packets() -> None:
    level = AudioLevel(CONFIG)
    _interval(level, 5)
    _interval(level, 5, start=20 * FRAME)
    assert level.close_interval() > 0, "one quiet interval: smoothed, not yet gone"
    level.close_interval()
    assert level.level == 0.0


def test_a_gap_in_transmission_is_not_speech() -> None:
    """Opus DTX sends nothing through silence: one packet after a long gap stands for one
    frame at most."""
    level = AudioLevel(CONFIG)
    level.observe(5, 0)
    level.observe(5, 48000 * 10)
    assert level.close_interval() == 0.0


def test_tracker_sends_changes_loudest_first_and_stops() -> None:
    tracker = SpeakerTracker()
    first = tracker.update({"PA_a": 0.3, "PA_b": 0.8, "PA_c": 0.0})
    assert [(s.sid, s.level, s.active) for s in first] == [
        ("PA_b", quantized(0.8), True),
        ("PA_a", quantized(0.3), True),
    ]
    assert tracker.update({"PA_a": 0.31, "PA_b": 0.8}) == [], "same eighths: no news"
    swapped = tracker.update({"PA_a": 0.0, "PA_b": 0.9})
    assert [(s.sid, s.level, s.active) for s in swapped] == [
        ("PA_b", 1.0, True),
        ("PA_a", 0.0, False),
    ]
