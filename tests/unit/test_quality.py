"""Connection quality without a network: the score of a window, its smoothing and the levels
(sfu/quality.py), and who is told (sfu/room.py)."""

from __future__ import annotations

from livekit.protocol import models

from sfu.quality import (
    MIN_SCORE,
    QualityScorer,
    Window,
    mean_opinion,
    packet_score,
    quality_of,
)


def test_clean_stream_is_excellent() -> None:
    assert packet_score(Window(packets=250, lost=0, rtt_ms=20, jitter_ms=2), 8.0) > 99
    assert quality_of(100.0) == models.ConnectionQuality.EXCELLENT
    assert mean_opinion(100.0) == 4.5


def test_loss_and_delay_cost_points() -> None:
    lossy = packet_score(Window(packets=95, lost=5), 8.0)  # 5 % of video
    assert lossy == 60.0
    assert quality_of(lossy) == models.ConnectionQuality.GOOD
    slow = packet_score(Window(packets=100, lost=0, rtt_ms=600, jitter_ms=50), 8.0)
    assert slow == 100 - (300 + 100 - 120) / 10
    assert quality_of(35.0) == models.ConnectionQuality.POOR
    assert quality_of(15.0) == models.ConnectionQuality.LOST


def test_scores_fall_fast_and_climb_slowly() -> None:
    scorer = QualityScorer("video")
    bad = Window(packets=80, lost=20)  # 20 % loss: 0 points
    assert scorer.update(bad) == MIN_SCORE, "falls to the floor, never below it"
    good = Window(packets=100, lost=0)
    assert scorer.update(good) == 0.4 * 100 + 0.6 * MIN_SCORE
    assert scorer.update(Window(packets=0, lost=0)) == 0.4 * 100 + 0.6 * MIN_SCORE, "no data"
    audio = QualityScorer("audio")
    assert audio.update(Window(packets=95, lost=5)) < 100
    assert audio.score > QualityScorer("video").update(Window(packets=95, lost=5))
