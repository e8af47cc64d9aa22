"""Sharing one subscriber's bandwidth among its video tracks (sans-IO), as LiveKit's
``streamallocator`` does.

- Tracks are served by priority: screen share first (LiveKit's priority 255 against 1 for a
  camera), then the larger the size the subscriber asked for, the earlier.
- Every track gets its lowest layer before any gets a higher one; then the layers are swept
  upwards, each track rising while the estimate has room, never above the layer the
  subscriber asked for (its quality or element size, ``UpdateTrackSettings``).
- A track whose lowest layer does not fit is paused when pausing is allowed (LiveKit
  ``allow_pause``; the subscriber is sent ``StreamStateUpdate`` PAUSED, and ACTIVE when it is
  resumed), else it keeps its lowest layer.
- Layers cost what the publisher sends in them (measured per layer); a layer not flowing
  cannot be allocated.

:class:`ProbeSchedule` decides when to probe: while some track is below what its subscriber
asked for, padding is sent at 120 % of the next step's extra cost (at least 200 kbps,
LiveKit's ``probe_overage_pct`` and ``probe_min_bps``); a probe that does not raise the
estimate makes the next wait twice as long.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: LiveKit's default track priorities.
SCREEN_SHARE_PRIORITY = 255
CAMERA_PRIORITY = 1
#: The share of the estimate layers above the lowest may take (the rest absorbs audio, RTCP,
#: retransmissions and the keyframe a switch brings). The lowest layers may take it all: a
#: track paused for the sake of headroom helps nobody.
USABLE_SHARE = 0.8
PAUSED = -1


@dataclass(frozen=True)
class Demand:
    """One video track as one subscriber wants it."""

    track_sid: str
    priority: int
    wanted_layer: int
    """The highest layer the subscriber asked for; -1: it wants none (disabled)."""
    layer_bitrates: Sequence[float]
    """bps of each spatial layer, lowest first; 0 for a layer not flowing."""


def allocate(estimate: float, demands: Iterable[Demand], *, allow_pause: bool) -> dict[str, int]:
    """The layer each track gets (:data:`PAUSED` when none fits and pausing is allowed)."""
    ordered = sorted(demands, key=lambda d: (-d.priority, -d.wanted_layer, d.track_sid))
    budget = estimate
    layers: dict[str, int] = {}
    for demand in ordered:
        if demand.wanted_layer < 0:
            layers[demand.track_sid] = PAUSED
            continue
        lowest = _lowest_flowing(demand)
        if lowest is None:
            layers[demand.track_sid] = 0  # nothing measured yet: let the selector decide
            continue
        cost = demand.layer_bitrates[lowest]
        if cost <= budget or not allow_pause:
            layers[demand.track_sid] = lowest
            budget -= cost
        else:
            layers[demand.track_sid] = PAUSED
    budget -= estimate * (1 - USABLE_SHARE)
    top = max((len(d.layer_bitrates) for d in ordered), default=0)
    for layer in range(1, top):
        for demand in ordered:
            current = layers[demand.track_sid]
            rates = demand.layer_bitrates
            if current < 0 or layer > demand.wanted_layer or layer >= len(rates):
                continue
            if not rates[layer] or current >= layer:
                continue
            step = rates[layer] - rates[current]
            if step <= budget:
                layers[demand.track_sid] = layer
                budget -= step
    return layers


def cost(demands: Iterable[Demand], layers: Mapping[str, int]) -> float:
    """The bps the allocated layers take."""
    total = 0.0
    for demand in demands:
        layer = layers.get(demand.track_sid, PAUSED)
        if 0 <= layer < len(demand.layer_bitrates):
            total += demand.layer_bitrates[layer]
    return total


def _lowest_flowing(demand: Demand) -> int | None:
    for layer, bitrate in enumerate(demand.layer_bitrates):
        if bitrate > 0 and layer <= max(demand.wanted_layer, 0):
            return layer
    return None


def next_step(demands: Iterable[Demand], layers: Mapping[str, int]) -> float:
    """The extra bps the next step up would need: the cheapest raise of a track below the
    layer its subscriber wants (0 when every track has what it asked for)."""
    steps = []
    for demand in demands:
        current = layers.get(demand.track_sid, PAUSED)
        rates = demand.layer_bitrates
        higher = [
            layer
            for layer in range(current + 1, min(demand.wanted_layer + 1, len(rates)))
            if rates[layer] > 0
        ]
        if higher:
            base = rates[current] if current >= 0 else 0.0
            steps.append(rates[higher[0]] - base)
    return min(steps, default=0.0)


#: Probing (LiveKit ``stream_allocator`` defaults).
PROBE_OVERAGE = 1.2
PROBE_MIN_BPS = 200_000
PROBE_DURATION_S = 1.0
PROBE_MAX_MULTIPLE = 2.0
PROBE_CAUTIOUS_MULTIPLE = 1.5
FIRST_PROBE_WAIT_S = 2.0
MAX_PROBE_WAIT_S = 5.0


class ProbeSchedule:
    """When to probe and how hard."""

    def __init__(self, overage: float = PROBE_OVERAGE, min_bps: float = PROBE_MIN_BPS) -> None:
        self._overage = overage
        self._min_bps = min_bps
        self._wait = FIRST_PROBE_WAIT_S
        self._next_at = 0.0
        self._until = 0.0
        self._goal = 0.0
        self.rate = 0.0
        """Padding bps while a probe runs; 0 otherwise."""
        self.ended_at = 0.0
        """When the last probe ended (its padding may still be queued on the path)."""
        self._succeeded = False
        self.ramping = False
        """The last probe succeeded: the next may aim higher."""

    def update(
        self,
        now: float,
        estimate: float,
        committed: float,
        goal: float,
        sending: float,
        congested: bool,
    ) -> float:
        """The padding rate to send now (0: none). ``goal``: the capacity the next step up
        needs (0: nothing to step up to); ``committed``: the capacity allocated now;
        ``sending``: the media rate going out; ``congested``: the estimator just cut, or the
        running probe met a queue. A probe succeeds when the estimate reaches its goal."""
        if self.rate:
            if congested or estimate >= self._goal or now >= self._until:
                self._finish(success=not congested and estimate >= self._goal, now=now)
            return self.rate
        if goal <= committed or congested:
            if congested:
                self._next_at = max(self._next_at, now + self._wait)
            return 0.0
        if now < self._next_at:
            return 0.0
        # At most 1.5 times the capacity, twice once probes succeed (libwebrtc probes mid-call
        # at twice its estimate): a step beyond that is climbed in more than one probe, rather
        # than burying the media under padding on a link that may be full.
        multiple = PROBE_MAX_MULTIPLE if self.ramping else PROBE_CAUTIOUS_MULTIPLE
        target = min(goal, multiple * committed)
        # LiveKit's floor of 200 kbps, but never more than the capacity again.
        self.rate = max(min(self._min_bps, committed), target * self._overage - sending)
        self._goal = target
        self._until = now + PROBE_DURATION_S
        return self.rate

    def take_success(self) -> bool:
        """Whether a probe succeeded since the last call."""
        succeeded, self._succeeded = self._succeeded, False
        return succeeded

    def _finish(self, *, success: bool, now: float) -> None:
        self.rate = 0.0
        self.ended_at = now
        self._succeeded = success
        self.ramping = success
        self._wait = FIRST_PROBE_WAIT_S if success else min(self._wait * 2, MAX_PROBE_WAIT_S)
        self._next_at = now + (0.5 if success else self._wait)
