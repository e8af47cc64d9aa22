"""Layer-choice benchmark: what a simulcast track's check costs, per track and per subscriber.

``SimulcastTrack.check`` runs every 100 ms for every simulcast track, from its packets, and
looks at every subscriber's layer (``sfu/simulcast_track.py``). In a meeting that is
publishers x subscribers x 10 a second, so its cost per call matters more than its cost per
packet. Here one track has three flowing layers and N subscribers laid out as a meeting's
(one in six on the top layer, four on the lowest, one with the track disabled), settled on
their layers; then checks run (a) with nothing changing, as most of them do, and (b) with one
subscriber changing its wish before each check.

    .venv/bin/python -m benchmarks.layers [--checks N]

Figures are CPU microseconds per check (``time.process_time``) and per subscriber.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace
from typing import Any, cast

from livekit.protocol import models

from protocol.sdp_media import Codec
from sfu.receiver import TrackReceiver
from sfu.simulcast_track import SimulcastTrack

VP8 = Codec(96, "video/VP8", 90000)


def _track(subscribers: int) -> SimulcastTrack:
    track = SimulcastTrack(["q", "h", "f"], models.TrackInfo(sid="TR_bench"))
    for spatial in range(3):
        track.add_layer(spatial, TrackReceiver(VP8, 100 + spatial, lambda _: None))
    for index in range(subscribers):
        wish = 2 if index % 6 == 0 else (0 if index % 6 < 5 else -1)
        downtrack = SimpleNamespace(bound=True, enabled=True, disabled=False, needs_keyframe=False)
        track.subscribe(f"PA_{index}", cast(Any, downtrack), wish, 0.0)
    return track


def _run(track: SimulcastTrack, checks: int, now: float, change: bool) -> tuple[float, float]:
    """(CPU seconds, the clock after) for ``checks`` checks 100 ms apart."""
    spent = 0.0
    for step in range(checks):
        now += 0.1
        for receiver in track.receivers.values():
            receiver.stats.received += 10
        if change:
            track.set_max_layer("PA_1", step % 2, now)
        started = time.process_time()
        track.check(now)
        spent += time.process_time() - started
        # Settle whoever waits for a keyframe (the packet path would, on the next one).
        for _, selector in list(track._subscribers.values()):
            if selector.target >= 0:
                selector.switched(selector.target)
        for receiver in track.receivers.values():
            receiver.switching.clear()
    return spent, now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checks", type=int, default=20000)
    args = parser.parse_args()
    print(
        f"{'subscribers':>11} {'steady us':>10} {'per sub':>8} {'changing us':>12} {'per sub':>8}"
    )
    for subscribers in (10, 34, 100, 300):
        track = _track(subscribers)
        _, now = _run(track, 50, 0.0, change=False)  # layers flow and settle
        steady, now = _run(track, args.checks, now, change=False)
        changing, _ = _run(track, args.checks // 4, now, change=True)
        steady_us = steady / args.checks * 1e6
        changing_us = changing / (args.checks // 4) * 1e6
        print(
            f"{subscribers:>11} {steady_us:>10.2f} {steady_us / subscribers:>8.3f} "
            f"{changing_us:>12.2f} {changing_us / subscribers:>8.3f}"
        )


if __name__ == "__main__":
    main()
