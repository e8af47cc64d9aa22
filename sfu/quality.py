"""Connection quality per participant (sans-IO, one window every :data:`WINDOW_S`).

LiveKit scores each stream of a participant, published or subscribed, on a 0..100 scale from
a simplified E-model (``sfu/connectionquality/scorer.go``): the one-way delay (half the round
trip plus twice the jitter) and the packet loss, weighted per kind, are taken off 100. Scores
climb back slowly and fall fast, and the participant's quality is its worst stream's:
EXCELLENT above 80, GOOD above 40, POOR above 20, LOST below. A stream that carried nothing
in the window (muted, paused) keeps its score. Clients get the quality and a mean opinion
score (1.0 to 4.5) derived from the score.
"""

from __future__ import annotations

from dataclasses import dataclass

from livekit.protocol import models

#: LiveKit sends ConnectionQualityUpdate every 5 s.
WINDOW_S = 5.0
MAX_SCORE, MIN_SCORE = 100.0, 30.0
#: Weights of the score's moves: up slowly, down fast (LiveKit's factors).
RISE, FALL = 0.4, 0.8
#: Score points per percent of loss. Video repairs loss by retransmission and hides it less
#: well than audio's concealment, so it weighs more.
LOSS_WEIGHT = {"audio": 4.0, "video": 8.0}
_QUALITY_FLOORS = (
    (80.0, models.ConnectionQuality.EXCELLENT),
    (40.0, models.ConnectionQuality.GOOD),
    (20.0, models.ConnectionQuality.POOR),
)


@dataclass(frozen=True)
class Window:
    """What one stream did during a window."""

    packets: int
    lost: int
    rtt_ms: float = 0.0
    jitter_ms: float = 0.0


def packet_score(window: Window, loss_weight: float) -> float:
    delay = window.rtt_ms / 2 + 2 * window.jitter_ms
    # Delay costs little until it is felt in conversation (about 160 ms one way).
    delay_effect = delay / 40 if delay <= 160 else (delay - 120) / 10
    sent = window.packets + window.lost
    loss_effect = window.lost * 100 / sent * loss_weight if sent else 0.0
    return max(0.0, MAX_SCORE - delay_effect - loss_effect)


class QualityScorer:
    """One stream's smoothed score."""

    __slots__ = ("loss_weight", "score")

    def __init__(self, kind: str) -> None:
        self.loss_weight = LOSS_WEIGHT.get(kind, LOSS_WEIGHT["video"])
        self.score = MAX_SCORE

    def update(self, window: Window) -> float:
        if window.packets == 0:
            return self.score
        target = packet_score(window, self.loss_weight)
        factor = RISE if target >= self.score else FALL
        self.score = max(MIN_SCORE, factor * target + (1 - factor) * self.score)
        return self.score


def quality_of(score: float) -> models.ConnectionQuality:
    for floor, quality in _QUALITY_FLOORS:
        if score > floor:
            return quality
    return models.ConnectionQuality.LOST


def mean_opinion(score: float) -> float:
    """ITU-T G.107's mapping of an R-factor to a MOS, clamped to 1.0..4.5."""
    r = score
    mos = 1 + 0.035 * r + 0.000007 * r * (r - 60) * (100 - r)
    return round(min(4.5, max(1.0, mos)), 2)
