"""The stream allocator and the probe schedule (``sfu/allocator.py``), without a network."""

from __future__ import annotations

from sfu.allocator import (
    CAMERA_PRIORITY,
    PAUSED,
    SCREEN_SHARE_PRIORITY,
    Demand,
    ProbeSchedule,
    allocate,
    cost,
    next_step,
)

LAYERS = (100_000, 225_000, 1_500_000)


def camera(sid: str, wanted: int = 2) -> Demand:
    return Demand(sid, CAMERA_PRIORITY, wanted, LAYERS)


def screen(sid: str = "screen", bitrate: float = 60_000) -> Demand:
    return Demand(sid, SCREEN_SHARE_PRIORITY, 0, (bitrate,))


def test_plenty_gives_everyone_what_they_asked_for() -> None:
    demands = [camera("a"), camera("b", wanted=1), screen()]
    layers = allocate(10_000_000, demands, allow_pause=True)
    assert layers == {"a": 2, "b": 1, "screen": 0}
    assert next_step(demands, layers) == 0


def test_every_track_gets_its_lowest_layer_before_any_gets_more() -> None:
    demands = [camera("a"), camera("b")]
    layers = allocate(500_000, demands, allow_pause=True)
    # 100k + 100k, then 125k more for one h: 325k of the 400k the upper layers may take.
    assert sorted(layers.values()) == [0, 1]
    assert cost(demands, layers) == 325_000
    assert next_step(demands, layers) == 125_000


def test_screen_share_first_the_camera_paused_when_nothing_else_fits() -> None:
    demands = [camera("a"), screen()]
    assert allocate(120_000, demands, allow_pause=True) == {"screen": 0, "a": PAUSED}
    # Without pausing, the camera keeps its lowest layer whatever the estimate.
    assert allocate(120_000, demands, allow_pause=False) == {"screen": 0, "a": 0}


def test_a_disabled_track_gets_nothing_and_a_layer_not_flowing_is_not_given() -> None:
    demands = [camera("off", wanted=-1), Demand("no-f", CAMERA_PRIORITY, 2, (100_000, 0, 0))]
    layers = allocate(10_000_000, demands, allow_pause=True)
    assert layers == {"off": PAUSED, "no-f": 0}


def test_the_larger_wish_is_served_first_among_equals() -> None:
    demands = [camera("small", wanted=1), camera("large", wanted=2)]
    layers = allocate(450_000, demands, allow_pause=True)
    assert layers == {"large": 1, "small": 0}


def test_probes_back_off_after_failure_and_ramp_after_success() -> None:
    probe = ProbeSchedule()
    assert probe.update(0.0, 400_000, 400_000, 450_000, 300_000, congested=False) > 0
    # Congestion during the probe: it failed; the next waits 4 s (doubled from 2).
    assert probe.update(0.3, 400_000, 400_000, 450_000, 300_000, congested=True) == 0
    assert not probe.take_success() and not probe.ramping
    assert probe.update(4.0, 400_000, 400_000, 450_000, 300_000, congested=False) == 0
    rate = probe.update(4.4, 400_000, 400_000, 900_000, 300_000, congested=False)
    # Cautious after a failure: aimed at 1.5 times the capacity, not the whole goal.
    assert rate == 600_000 * 1.2 - 300_000
    # The estimate reached the probe's target: success, committed, and the next may ramp.
    assert probe.update(5.0, 650_000, 400_000, 900_000, 300_000, congested=False) == 0
    assert probe.take_success() and probe.ramping
    rate = probe.update(5.6, 650_000, 650_000, 2_000_000, 300_000, congested=False)
    assert rate == 1_300_000 * 1.2 - 300_000


def test_a_probe_never_floods_a_slow_link() -> None:
    probe = ProbeSchedule()
    # LiveKit's 200 kbps floor, but no more than the capacity itself on an 80 kbps link.
    assert probe.update(0.0, 80_000, 80_000, 100_000, 70_000, congested=False) == 80_000
