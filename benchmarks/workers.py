"""``--workers 2`` against ``--workers 1`` on this 2-core machine (issue 6): aggregate
forwarding throughput with both configurations CPU-bound.

Each run starts a fresh server with ``W`` workers, creates ``rooms-per-worker x W`` rooms one
by one through RoomService (more than a stats interval apart, with ``node_selector.sort_by:
rooms``, so they spread over the workers; where each landed is read from the server's log) and
loads every room alike, in two phases so that nobody joins a saturated server (its signalling
and handshakes would queue behind the media): first one load tester per room with the
subscribers and one audio publisher (``--sink``: each subscriber stops taking media in once
that track flows, so the generator costs almost nothing per forwarded packet), then, once
every room's subscribers are in, one load tester per room with the heavy publishers
(single-layer 720p video and audio), which the subscribers are subscribed to without ever
reading it. The per-room load is chosen so that one worker carrying its share of rooms is past
its CPU limit. Over the window the server's own counters say what it forwarded
(``livekit_packet_total{direction="outgoing"}`` from each worker's metrics endpoint),
``/proc`` what each worker, the supervisor and the load testers spent.

One worker runs pinned to core 0 with the load testers on core 1; two workers are pinned to
cores 0 and 1 with the load testers free to go where there is room. Runs alternate between the
two configurations. In the test namespace:

    unshare -n sh tests/netns.sh .venv/bin/python -m benchmarks.workers --repeat 2
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from livekit import api

from benchmarks import probe
from loadtest import procstat
from tests.e2e.harness import API_KEY, API_SECRET, free_port, packets_out, start_server

#: Seconds between room creations: more than the node stats interval (2 s), so each new
#: room sees the rooms created before it.
ROOM_SPACING_S = 2.6
SETTLE_S = 5.0
TARGET_RATIO = 1.8
_ROOM = re.compile(r"\broom=(\S+)")
_WORKER = re.compile(r"\bworker=(\d+)")
_METRICS = re.compile(r"metrics on \S+ port (\d+)")


def metrics_port(count: int) -> int:
    """A port P with the ports after it free for the other workers."""
    while True:
        port = free_port()
        if all(_free(port + i) for i in range(1, count)):  # see metrics_ports
            return port


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def create_rooms(url: str, names: list[str]) -> None:
    async with api.LiveKitAPI(url, API_KEY, API_SECRET) as lkapi:
        for index, name in enumerate(names):
            if index:
                await asyncio.sleep(ROOM_SPACING_S)
            await lkapi.room.create_room(api.CreateRoomRequest(name=name, empty_timeout=600))


def placement(log: str) -> dict[str, int]:
    """Room -> worker index, from ``room created ... worker=N`` lines (0 without workers)."""
    found = {}
    for line in log.splitlines():
        room = _ROOM.search(line)
        if "room created" in line and room:
            worker = _WORKER.search(line)
            found[room.group(1)] = int(worker.group(1)) if worker else 0
    return found


def metrics_ports(log: str) -> dict[int, int]:
    """Worker index -> its metrics port, from ``metrics on ... port N`` lines (README says
    ``prometheus_port + index``; read what each worker really serves)."""
    found = {}
    for line in log.splitlines():
        port = _METRICS.search(line)
        if port:
            worker = _WORKER.search(line)
            found[int(worker.group(1)) if worker else 0] = int(port.group(1))
    return found


def subscriber_flags(args: argparse.Namespace, room: str, rate: float) -> list[str]:
    """Phase 1 of a room: its subscribers and one audio publisher, whose track tells each
    subscriber when to sink; runs until interrupted."""
    flags = ["--room", room, "--identity-prefix", f"{room}s", "--audio-publishers", "1"]
    flags += ["--subscribers", str(args.subscribers), "--num-per-second", f"{rate:g}"]
    flags += ["--duration", "0", "--join-timeout", f"{args.join_timeout:g}", "--sink"]
    return flags


def publisher_flags(args: argparse.Namespace, room: str, duration: float) -> list[str]:
    """Phase 2: the room's heavy publishers (single-layer 720p video and audio)."""
    flags = ["--room", room, "--identity-prefix", f"{room}p"]
    flags += ["--audio-publishers", str(args.audio_publishers)]
    flags += ["--video-publishers", str(args.video_publishers), "--no-simulcast"]
    flags += ["--num-per-second", "2", "--duration", f"{duration:g}"]
    return [*flags, "--join-timeout", f"{args.join_timeout:g}"]


def sample(
    pids: dict[int, int], ports: dict[int, int], supervisor: int, generators: list[int]
) -> dict[str, Any]:
    return {
        "time": time.monotonic(),
        "supervisor": procstat.own_cpu_seconds(supervisor),
        "cpu": {i: procstat.own_cpu_seconds(pid) for i, pid in pids.items()},
        "packets": {i: packets_out(port) for i, port in ports.items()},
        "drops": probe.udp_drops(),
        "generators": sum(procstat.cpu_seconds(pid) for pid in generators),
    }


def run(workers: int, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    port = metrics_port(workers)
    config = f"prometheus_port: {port}\nnode_selector:\n  kind: any\n  sort_by: rooms\n"
    server_args = ("--workers", str(workers)) if workers > 1 else ()
    server = start_server(log_dir, config, args=server_args)
    subscribers: list[probe.LoadTest] = []
    try:
        if workers > 1:
            pids = probe.workers_of(server.proc.pid)
        else:
            pids = {0: server.proc.pid}
        for index, pid in pids.items():
            probe.pin(pid, index % 2)
        ports = metrics_ports(server.logs())
        udp_ports = probe.server_udp_ports(server.logs())
        names = [f"w{workers}-room{i}" for i in range(args.rooms_per_worker * workers)]
        asyncio.run(create_rooms(server.ws_url, names))
        rooms = placement(server.logs())
        rate = args.num_per_second / len(names)
        core = probe.LOADER_CORE if workers == 1 else None
        load_before = probe.load_average()
        subscribers = [
            probe.LoadTest.start(server.ws_url, subscriber_flags(args, name, rate), core)
            for name in names
        ]
        ramp = (args.subscribers + 1) / rate
        probe.wait_all_running(subscribers, timeout=ramp + args.join_timeout + 60)
        duration = SETTLE_S + args.window + 5.0
        publishers = [
            probe.LoadTest.start(server.ws_url, publisher_flags(args, name, duration), core)
            for name in names
        ]
        probe.wait_all_running(publishers, timeout=args.join_timeout + 60)
        time.sleep(SETTLE_S)
        generators = [test.proc.pid for test in subscribers + publishers]
        start = sample(pids, ports, server.proc.pid, generators)
        time.sleep(args.window)
        end = sample(pids, ports, server.proc.pid, generators)
        load_after = probe.load_average()
        summaries = [test.finish() for test in publishers]
        for test in subscribers:
            test.interrupt()
        summaries += [test.finish() for test in subscribers]
    finally:
        for test in subscribers:
            if test.proc.poll() is None:
                test.proc.kill()
        server.stop()
    seconds = end["time"] - start["time"]
    per_worker = {}
    for index in pids:
        cpu = end["cpu"][index] - start["cpu"][index]
        packets = end["packets"][index] - start["packets"][index]
        per_worker[index] = {
            "cpu": cpu / seconds,
            "rate": packets / seconds,
            "per_cpu": packets / cpu if cpu else 0.0,
            "rooms": sum(1 for w in rooms.values() if w == index),
        }
    drops = sum(end["drops"].get(p, 0) - start["drops"].get(p, 0) for p in udp_ports)
    return {
        "workers": workers,
        "seconds": seconds,
        "rate": sum(w["rate"] for w in per_worker.values()),
        "per_worker": per_worker,
        "rooms": rooms,
        "joined": sum(s["joined"] for s in summaries),
        "participants": sum(s["participants"] for s in summaries),
        "errors": sorted({e for s in summaries for e in s["errors"]}),
        "server_drops": drops,
        "supervisor_cpu": (end["supervisor"] - start["supervisor"]) / seconds if workers > 1 else 0,
        "generator_cpu": (end["generators"] - start["generators"]) / seconds,
        "load": (load_before, load_after),
        "commands": (subscribers[0].shown(), publishers[0].shown()),
        "traceback": "Traceback" in server.logs(),
    }


def describe(result: dict[str, Any]) -> str:
    workers = "; ".join(
        f"w{i}: {w['rooms']} rooms, {100 * w['cpu']:.0f} % CPU, {w['rate']:,.0f} pkt/s, "
        f"{w['per_cpu']:,.0f} pkt/CPU-s ({1e6 / w['per_cpu'] if w['per_cpu'] else 0:.1f} µs)"
        for i, w in sorted(result["per_worker"].items())
    )
    return (
        f"| {result['workers']} | {result['rate']:,.0f} | {workers} | "
        f"{100 * result['supervisor_cpu']:.0f} % | {100 * result['generator_cpu']:.0f} % | "
        f"{result['joined']}/{result['participants']} | {result['server_drops']:,} | "
        f"{result['load'][0]} -> {result['load'][1]} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms-per-worker", type=int, default=2)
    parser.add_argument("--audio-publishers", type=int, default=2, help="per room")
    parser.add_argument("--video-publishers", type=int, default=2, help="per room, 720p")
    parser.add_argument("--subscribers", type=int, default=90, help="per room")
    parser.add_argument("--num-per-second", type=float, default=30.0, help="over all rooms")
    parser.add_argument("--join-timeout", type=float, default=40.0, help="the load tester's")
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured")
    parser.add_argument("--repeat", type=int, default=1, help="1-worker/2-worker pairs")
    parser.add_argument("--configs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="lkpy-workers-"))
    print(
        "| workers | out pkt/s (server metrics) | per worker | supervisor CPU | load testers' "
        "CPU | joined | server socket drops | load average before -> after |"
    )
    print("|---|---|---|---|---|---|---|---|")
    results: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        pair = []
        for workers in args.configs:
            result = run(workers, args, log_dir)
            print(describe(result), flush=True)
            for error in result["errors"][:3]:
                print(f"  join error: {error}")
            if result["traceback"]:
                print("  server log has a Traceback")
            pair.append(result)
        results += pair
        if len(pair) == 2 and pair[0]["rate"]:
            ratio = pair[1]["rate"] / pair[0]["rate"]
            verdict = "met" if ratio >= TARGET_RATIO else "missed"
            print(
                f"  ratio {pair[1]['workers']}/{pair[0]['workers']} workers: {ratio:.2f}x "
                f"(target {TARGET_RATIO}x: {verdict})",
                flush=True,
            )
    first, second = results[0]["commands"]
    print(f"\nper room, first: {first}\nthen, once every room's subscribers joined: {second}")


if __name__ == "__main__":
    main()
