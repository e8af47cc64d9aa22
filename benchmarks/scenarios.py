"""LiveKit's published benchmark scenarios, scaled to this machine, with our load tester.

For each scenario (large audio room: 10 publishers and many listeners; large meeting:
everyone publishes audio and video; livestream: one 720p simulcast publisher, many viewers)
the load is stepped up, each step against a fresh server pinned to core 0 with the load
tester (``livekit-py-server load-test``) pinned to core 1, until a step loses 1 % of its
packets, a participant fails to join, or the server stops keeping up: a saturated server
queues packets in its socket buffer rather than losing them, so a step also fails when each
subscribed track (each audio track where there is audio) delivers less than 97 % of the packet
rate it delivered at the lightest step (the media is the same pre-encoded loop at every step)
while it is busy over 90 % of its core. The largest passing step is reported
as packets the
subscribers received per server CPU-second, next to LiveKit's per-vCPU figure from its
16-vCPU benchmark (``../shared/reference/performance.md``). Traffic stays on loopback; run it
in the test namespace like the other benchmarks:

    unshare -n sh tests/netns.sh .venv/bin/python -m benchmarks.scenarios --duration 10
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import probe
from tests.e2e.harness import ServerProcess, start_server

MAX_LOSS_PERCENT = 1.0
#: A step keeps up when each track delivers at least this share of the lightest step's rate.
MIN_DELIVERED = 0.97
#: Below this share of its core the server is not saturated, whatever the rate per track.
MAX_BUSY = 0.9


@dataclass(frozen=True)
class Scenario:
    name: str
    flags: Callable[[int], list[str]]
    steps: tuple[int, ...]
    livekit_per_vcpu: float
    """LiveKit's out packets per busy vCPU-second in its published run of this shape."""
    unit: str


SCENARIOS = (
    Scenario(
        "audio room",
        lambda n: ["--audio-publishers", "10", "--subscribers", str(n)],
        (25, 50, 100, 150, 200, 300, 400, 600),
        74_900,
        "listeners",
    ),
    Scenario(
        "meeting",
        lambda n: (
            ["--audio-publishers", str(n), "--video-publishers", str(n), "--subscribers", str(n)]
        ),
        (2, 4, 6, 8, 10, 14, 20, 28, 34, 40),
        56_100,
        "publishers + as many subscribers",
    ),
    Scenario(
        "livestream",
        lambda n: ["--video-publishers", "1", "--subscribers", str(n)],
        (25, 50, 100, 200, 300, 400, 600, 800),
        38_100,
        "viewers",
    ),
)


def run_step(scenario: Scenario, load: int, duration: float, log_dir: Path) -> dict[str, Any]:
    """One load test against a fresh server; its JSON summary."""
    server: ServerProcess = start_server(log_dir, extra_env={"NODE_IP": "127.0.0.1"})
    try:
        probe.pin(server.proc.pid, probe.SERVER_CORE)
        flags = [*scenario.flags(load), "--duration", str(duration), "--num-per-second", "20"]
        flags += ["--server-pid", str(server.proc.pid)]
        return probe.LoadTest.start(server.ws_url, flags).finish()
    finally:
        server.stop()


def per_track_rate(summary: dict[str, Any]) -> float:
    """Packets per second each subscribed track delivered in the window: audio tracks when
    there are any (their rate is fixed, while a meeting's layout changes how many video tracks
    each subscriber takes, and so the average over all tracks), else every media track."""
    window = summary["window"]
    seconds = float(window["seconds"] or 1.0)
    if window.get("audio_tracks"):
        return float(window["audio_packets_in"]) / seconds / float(window["audio_tracks"])
    tracks = summary["media_tracks_received"] or 1
    return float(window["packets_in"]) / seconds / tracks


def passed(summary: dict[str, Any], reference_rate: float) -> bool:
    return bool(
        summary["joined"] == summary["participants"]
        and summary["window_loss_percent"] < MAX_LOSS_PERCENT
        and summary["srtp_errors"] == 0
        and kept_up(summary, reference_rate)
    )


def server_rates(summary: dict[str, Any]) -> tuple[float, float, float]:
    """(packets out per second, share of a core the server was busy, packets out per server
    CPU-second) in the window."""
    window = summary["window"]
    seconds = float(window["seconds"] or 1.0)
    cpu = float(summary["server_cpu_seconds"] or 0.0)
    packets = float(window["packets_in"])
    return packets / seconds, cpu / seconds, packets / cpu if cpu else 0.0


def kept_up(summary: dict[str, Any], reference_rate: float) -> bool:
    """Delivering the lightest step's rate per track, or clearly not saturated."""
    busy = server_rates(summary)[1]
    return per_track_rate(summary) >= MIN_DELIVERED * reference_rate or busy < MAX_BUSY


def describe(summary: dict[str, Any], reference_rate: float) -> str:
    delivered = per_track_rate(summary) / reference_rate if reference_rate else 0.0
    window = summary["window"]
    rate, busy, per_cpu = server_rates(summary)
    return (
        f"{rate:,.0f} pkt/s out, "
        f"{per_track_rate(summary):.1f} per track ({100 * delivered:.1f} % of the lightest "
        f"step's), loss {summary['window_loss_percent']:.2f} % "
        f"({summary['loss_percent']:.2f} % with the joins), "
        f"server {100 * busy:.0f} % of a core, {per_cpu:,.0f} pkt per CPU-s, "
        f"load tester {100 * window['cpu_seconds'] / (window['seconds'] or 1.0):.0f} %, "
        f"join p50/p99 {summary['connect_p50_ms'] or 0:.0f}/"
        f"{summary['connect_p99_ms'] or 0:.0f} ms"
    )


def run_scenario(scenario: Scenario, duration: float, log_dir: Path) -> tuple[int, dict[str, Any]]:
    best: tuple[int, dict[str, Any]] = (0, {})
    reference_rate = 0.0
    for load in scenario.steps:
        summary = run_step(scenario, load, duration, log_dir)
        reference_rate = reference_rate or per_track_rate(summary)
        ok = passed(summary, reference_rate)
        mark = "" if ok else "  <- over the limit"
        line = f"{scenario.name}, {load} {scenario.unit}: {describe(summary, reference_rate)}{mark}"
        print(line, file=sys.stderr, flush=True)
        if not ok:
            break
        best = (load, summary)
    return best


def report(results: list[tuple[Scenario, int, dict[str, Any]]]) -> str:
    lines = [
        "| scenario | largest load kept up with (under 1 % loss) | packets out/s | server CPU | "
        "out packets per server CPU-second | LiveKit per vCPU-second | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario, load, summary in results:
        if not summary:
            livekit = f"{scenario.livekit_per_vcpu:,.0f}"
            lines.append(f"| {scenario.name} | none passed | | | | {livekit} | |")
            continue
        rate, busy, per_cpu = server_rates(summary)
        lines.append(
            f"| {scenario.name} | {load} {scenario.unit} | {rate:,.0f} "
            f"| {100 * busy:.0f} % | {per_cpu:,.0f} | {scenario.livekit_per_vcpu:,.0f} "
            f"| {per_cpu / scenario.livekit_per_vcpu:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per step")
    parser.add_argument("--only", choices=[s.name for s in SCENARIOS], action="append")
    args = parser.parse_args()
    if os.environ.get("LKPY_TEST_NETNS") != "1":
        note = "note: not in the test namespace (tests/netns.sh); the server advertises 127.0.0.1"
        print(note, file=sys.stderr)
    log_dir = Path(tempfile.mkdtemp(prefix="lkpy-scenarios-"))
    results = []
    for scenario in SCENARIOS:
        if args.only and scenario.name not in args.only:
            continue
        load, summary = run_scenario(scenario, args.duration, log_dir)
        results.append((scenario, load, summary))
    print(report(results))


if __name__ == "__main__":
    main()
