"""Join storm (issue 7): N participants join one room at ``--num-per-second`` with the load
tester, against a fresh server (one worker) pinned to core 0, the load tester on core 1.

Reports join latency p50/p99 (WebSocket opened to subscriber transport connected, as the load
tester measures it) and first media, failures, the server's CPU during the storm (per join),
and, for the short window after it, server CPU per forwarded packet. Run it in the test
namespace:

    unshare -n sh tests/netns.sh .venv/bin/python -m benchmarks.join_storm --runs 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import probe
from loadtest import procstat
from tests.e2e.harness import start_server

P50_TARGET_MS, P99_TARGET_MS = 300.0, 1000.0


def storm(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    server = start_server(log_dir)
    pid = server.proc.pid
    try:
        probe.pin(pid, probe.SERVER_CORE)
        flags = ["--audio-publishers", str(args.audio_publishers)]
        if args.video_publishers:
            flags += ["--video-publishers", str(args.video_publishers)]
        publishers = max(args.audio_publishers, args.video_publishers)
        flags += ["--subscribers", str(args.participants - publishers)]
        flags += ["--num-per-second", f"{args.num_per_second:g}", "--duration", f"{args.window:g}"]
        flags += ["--server-pid", str(pid)]
        if args.sink:
            flags.append("--sink")
        load_before = probe.load_average()
        cpu_before, start = procstat.cpu_seconds(pid), time.monotonic()
        run = probe.LoadTest.start(server.ws_url, flags)
        ramp = args.participants / args.num_per_second
        run.wait_running(timeout=ramp + 120)
        storm_cpu = procstat.cpu_seconds(pid) - cpu_before
        storm_seconds = time.monotonic() - start
        summary = run.finish()
        load_after = probe.load_average()
    finally:
        server.stop()
    log = server.logs()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    return {
        "command": run.shown(),
        "summary": summary,
        "storm_cpu": storm_cpu,
        "storm_seconds": storm_seconds,
        "load": (load_before, load_after),
        "server_errors": errors,
        "traceback": "Traceback" in log,
    }


def describe(index: int, result: dict[str, Any]) -> str:
    summary = result["summary"]
    joined = summary["joined"]
    p50, p99 = summary["connect_p50_ms"] or 0.0, summary["connect_p99_ms"] or 0.0
    m50, m99 = summary["first_media_p50_ms"], summary["first_media_p99_ms"]
    media = f"{m50:.0f} / {m99:.0f} ms" if m50 is not None and m99 is not None else "-"
    cpu = result["storm_cpu"]
    per_join = 1000 * cpu / joined if joined else 0.0
    window = summary["window"]
    us = summary["server_us_per_packet"]
    per_packet = f"{us:.2f} µs, {1e6 / us:,.0f} pkt/CPU-s" if us else "-"
    return (
        f"| {index} | {joined}/{summary['participants']} | {summary['failed']} | "
        f"{p50:.0f} / {p99:.0f} ms | {media} | "
        f"{cpu:.2f} s over {result['storm_seconds']:.1f} s ({per_join:.1f} ms per join) | "
        f"{window['packets_in'] / (window['seconds'] or 1):,.0f} pkt/s, {per_packet} | "
        f"{result['load'][0]} -> {result['load'][1]} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--participants", type=int, default=200)
    parser.add_argument("--num-per-second", type=float, default=20.0)
    parser.add_argument(
        "--audio-publishers", type=int, default=1, help="of the participants, join first"
    )
    parser.add_argument("--video-publishers", type=int, default=0)
    parser.add_argument("--sink", action="store_true", help="the load tester's --sink")
    parser.add_argument("--window", type=float, default=5.0, help="seconds after the storm")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="lkpy-storm-"))
    print(
        "| run | joined | failed | join p50 / p99 | first media p50 / p99 | server CPU in the "
        "storm | after the storm: out, server per packet | load average before -> after |"
    )
    print("|---|---|---|---|---|---|---|---|")
    worst_p50 = worst_p99 = 0.0
    for index in range(1, args.runs + 1):
        result = storm(args, log_dir)
        print(describe(index, result), flush=True)
        summary = result["summary"]
        worst_p50 = max(worst_p50, summary["connect_p50_ms"] or 0.0)
        worst_p99 = max(worst_p99, summary["connect_p99_ms"] or 0.0)
        for error in summary["errors"][:3]:
            print(f"  join error: {error}")
        for line in result["server_errors"][:3]:
            print(f"  server: {line}")
        if result["traceback"]:
            print("  server log has a Traceback")
        if index == 1:
            print(f"  command: {result['command']}", file=sys.stderr)
    verdict = "met" if worst_p50 < P50_TARGET_MS and worst_p99 < P99_TARGET_MS else "missed"
    print(
        f"\ntargets p50 < {P50_TARGET_MS:.0f} ms, p99 < {P99_TARGET_MS:.0f} ms: {verdict} "
        f"(worst run p50 {worst_p50:.0f} ms, p99 {worst_p99:.0f} ms)"
    )


if __name__ == "__main__":
    main()
