"""Memory per idle participant (issue 7): load-test subscribers connected to one room, nothing
published, against a fresh server (one worker) per count, pinned to core 0 with the load
tester on core 1.

Per count: the server's VmRSS (``/proc/<pid>/status``) before the joins and once every
participant has joined and a few seconds have passed; per participant = delta / N. The
marginal figure between two counts (the difference of their deltas over the difference of
their counts) leaves out what the first join costs once (lazily imported modules, first
allocations). Also the server's CPU over the idle window. Run it in the test namespace:

    unshare -n sh tests/netns.sh .venv/bin/python -m benchmarks.memory --participants 100 500
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import probe
from tests.e2e.harness import start_server

TARGET_KB = 1024
SETTLE_S = 3.0


def measure(count: int, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    server = start_server(log_dir)
    pid = server.proc.pid
    try:
        probe.pin(pid, probe.SERVER_CORE)
        time.sleep(1.0)
        before = probe.resident_kb(pid)
        flags = ["--subscribers", str(count), "--num-per-second", f"{args.num_per_second:g}"]
        flags += ["--duration", f"{args.window:g}", "--server-pid", str(pid)]
        load = probe.load_average()
        run = probe.LoadTest.start(server.ws_url, flags)
        run.wait_running(timeout=count / args.num_per_second + 120)
        time.sleep(SETTLE_S)
        after = probe.resident_kb(pid)
        peak = after
        while run.proc.poll() is None:
            peak = max(peak, probe.resident_kb(pid))
            time.sleep(0.5)
        summary = run.finish()
    finally:
        server.stop()
    return {
        "count": count,
        "before": before,
        "after": after,
        "peak": peak,
        "summary": summary,
        "load": load,
        "command": run.shown(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--participants", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--num-per-second", type=float, default=25.0)
    parser.add_argument("--window", type=float, default=10.0, help="idle seconds measured")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="lkpy-memory-"))
    results = [measure(count, args, log_dir) for count in args.participants]
    print(
        "| participants | joined | RSS before | RSS after joins (peak) | per participant | "
        "idle server CPU | per participant | load average |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        summary, count = result["summary"], result["count"]
        delta = result["after"] - result["before"]
        seconds = summary["window"]["seconds"] or 1.0
        cpu = (summary["server_cpu_seconds"] or 0.0) / seconds
        print(
            f"| {count} | {summary['joined']}/{summary['participants']} | "
            f"{result['before'] / 1024:.1f} MB | {result['after'] / 1024:.1f} MB "
            f"({result['peak'] / 1024:.1f}) | {delta / count:.0f} KB | "
            f"{100 * cpu:.1f} % of a core | {1000 * cpu / count:.3f} ms/s | {result['load']} |"
        )
    for low, high in itertools.pairwise(results):
        grown = (high["after"] - high["before"]) - (low["after"] - low["before"])
        per = grown / (high["count"] - low["count"])
        print(f"\nmarginal, {low['count']} -> {high['count']} participants: {per:.0f} KB each")
    worst = max((r["after"] - r["before"]) / r["count"] for r in results)
    verdict = "met" if worst < TARGET_KB else f"missed by {worst - TARGET_KB:.0f} KB"
    print(f"target < {TARGET_KB} KB per idle participant: {verdict} (worst {worst:.0f} KB)")
    print(f"command: {results[0]['command']}")


if __name__ == "__main__":
    main()
