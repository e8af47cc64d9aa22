"""Cost of metrics and webhooks on forwarding: the fan-out of ``benchmarks/forwarding.py``
with both off and with both on, repetitions interleaved so machine noise hits both alike.

Both variants hold the same node state: the publisher and every subscriber as real
``Participant`` objects in a room around the fan-out, and a room event (a join) every
``--event-interval``. "On" adds what the metrics and webhooks cost, at rates far above a real
deployment's: the node's Prometheus collector (room walk, media counters, process metrics) on
the real ``/metrics`` site, scraped over loopback by another process every
``--scrape-interval`` (100 ms; Prometheus defaults to 15 s), and the webhook notifier signing
and POSTing every event to a receiver in another process. Incoming packets are fed in batches
with a yield to the event loop in between, as datagrams arrive on a real socket. CPU is this
process's (``time.process_time``); scraper and receiver are other processes, as Prometheus and
a backend would be. After each run the process's CPU over ``--idle`` seconds without packets
is measured too (on minus off: all that metrics and webhooks cost, HTTP included), and after
each "on" run one scrape's and one webhook's CPU alone; machine noise hardly moves those.

    .venv/bin/python -m benchmarks.overhead [--out-packets N] [--repeat R]
        [--scrape-interval S] [--event-interval S] [--idle S] [--sizes B ...] [--fan-outs N ...]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import uvloop
from aiohttp import web
from livekit.protocol import models
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from benchmarks.forwarding import FanOut, fan_out
from protocol.token import VideoGrant
from server.metrics import Lifecycle, MetricsSources, create_registry
from server.metrics_http import metrics_app
from sfu.counters import MediaCounters
from sfu.endpoint import Endpoint
from sfu.events import EventBus, EventKind, RoomEvent
from sfu.ice import IceRegistry, UdpMux
from sfu.participant import Participant
from sfu.participant_api import JoinParams
from sfu.receiver import PublishedTrack
from sfu.room import Room, RoomSettings
from sfu.rooms import RoomManager
from signaling.webhooks import WebhookNotifier

#: Incoming packets per event-loop iteration.
BATCH = 10
API_KEY, SECRET = "bench", "bench-secret-that-is-at-least-32-characters"
SCRAPER = """
import sys, time, urllib.request
url, interval = sys.argv[1], float(sys.argv[2])
while True:
    try:
        urllib.request.urlopen(url, timeout=5).read()
    except OSError:
        pass
    time.sleep(interval)
"""
RECEIVER = """
import http.server, sys
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Options:
    scrape_interval: float
    event_interval: float
    hook_url: str
    idle_s: float = 0.5


@dataclass
class Run:
    cpu: float
    out: int
    scrapes: int = 0
    webhooks: int = 0
    scrape_ms: float = 0.0
    """CPU of one scrape's exposition, measured after the run."""
    webhook_ms: float = 0.0
    """CPU of one webhook, measured after the run."""
    idle_load: float = 0.0
    """Share of a core the process used afterwards with no packets: what the node costs
    beside forwarding (with metrics and webhooks on, everything they cost)."""

    @property
    def us_per_out(self) -> float:
        return self.cpu / self.out * 1e6

    def cells(self, enabled: bool) -> tuple[object, ...]:
        rate = f"{self.out / self.cpu:.0f}"
        on_off = "on" if enabled else "off"
        return (
            on_off,
            self.out,
            f"{self.cpu:.3f}",
            f"{self.us_per_out:.2f}",
            rate,
            self.scrapes,
            self.webhooks,
        )


class _ScrapeCount:
    """A collector that only counts scrapes, to show they happened."""

    def __init__(self) -> None:
        self.count = 0

    def collect(self) -> Iterator[Metric]:
        self.count += 1
        return iter(())


def _participants(room: Room, fan: FanOut) -> list[Participant]:
    """The publisher and its subscribers as real participants holding the fan-out's receiver
    and downtracks, so the collector walks what a real room would hold."""
    endpoint = Endpoint(IceRegistry(), UdpMux(IceRegistry()), 9, 0, ("127.0.0.1",))
    people = []
    for index in range(len(fan.receiver.downtracks) + 1):
        identity = f"p{index}"
        participant = Participant(
            sid=f"PA_{identity}",
            params=JoinParams(identity=identity, grant=VideoGrant(room_join=True, room="bench")),
            room_name=room.name,
            sink=_NullSink(),
            listener=room,
            endpoint=endpoint,
        )
        room.participants[identity] = participant
        people.append(participant)
    info = models.TrackInfo(sid="TR_bench", type=models.TrackType.AUDIO)
    people[0].tracks.published[info.sid] = PublishedTrack(info=info, receiver=fan.receiver)
    for subscriber, downtrack in zip(people[1:], fan.receiver.downtracks.values(), strict=True):
        subscriber.tracks.downtracks[info.sid] = downtrack
    return people


class _NullSink:
    def send(self, response: object) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass
class Instruments:
    notifier: WebhookNotifier
    registry: CollectorRegistry
    scrapes: _ScrapeCount = field(default_factory=_ScrapeCount)
    emit: Callable[[], None] = lambda: None

    def delivered(self) -> int:
        return self.notifier.counts[EventKind.PARTICIPANT_JOINED.value, "success"]

    async def webhook_cpu_ms(self, samples: int = 20) -> float:
        """CPU per webhook, from the room event to the receiver's answer."""
        goal = self.delivered() + samples
        start = time.process_time()
        for _ in range(samples):
            self.emit()
        while self.delivered() < goal:  # noqa: ASYNC110 - the notifier has no event to await
            await asyncio.sleep(0.001)
        return (time.process_time() - start) / samples * 1000

    def scrape_cpu_ms(self, samples: int = 20) -> float:
        """CPU of one exposition of this node's registry, without the HTTP around it."""
        start = time.process_time()
        for _ in range(samples):
            generate_latest(self.registry)
        return (time.process_time() - start) / samples * 1000


@dataclass
class Node:
    """What the node holds with or without metrics and webhooks: a room with the fan-out's
    participants, and the event bus its room events go to."""

    events: EventBus
    rooms: RoomManager
    room: Room
    people: list[Participant]

    def join(self) -> None:
        """A participant "joining" again: the room event a real join emits."""
        participant = self.people[1].to_info()
        self.events.emit(RoomEvent(EventKind.PARTICIPANT_JOINED, self.room.to_proto(), participant))


@asynccontextmanager
async def node(fan: FanOut, event_interval: float) -> AsyncIterator[Node]:
    """The room around the fan-out, with a join event every ``event_interval``."""
    events = EventBus()
    rooms = RoomManager(
        RoomSettings(empty_timeout=300, departure_timeout=20, max_participants=0),
        auto_create=True,
        events=events,
    )
    room = rooms.get_or_create("bench", may_create=True)
    state = Node(events, rooms, room, _participants(room, fan))

    async def churn() -> None:
        while True:
            await asyncio.sleep(event_interval)
            state.join()

    churning = asyncio.get_running_loop().create_task(churn())
    try:
        yield state
    finally:
        churning.cancel()
        await asyncio.gather(churning, return_exceptions=True)


@asynccontextmanager
async def instrumented(state: Node, fan: FanOut, options: Options) -> AsyncIterator[Instruments]:
    """Metrics served and scraped, webhooks sent, for as long as the block runs."""
    lifecycle = Lifecycle()
    notifier = WebhookNotifier([options.hook_url], API_KEY, SECRET)
    state.events.subscribe(lifecycle)
    state.events.subscribe(notifier)
    await notifier.start()
    counters = MediaCounters()
    counters.add_receiver(fan.receiver)
    for downtrack in fan.receiver.downtracks.values():
        counters.add_downtrack(downtrack)
    sources = MetricsSources(state.rooms, media=counters, webhook_counts=lambda: notifier.counts)
    registry = create_registry("ND_bench", sources, lifecycle)
    instruments = Instruments(notifier, registry, emit=state.join)
    registry.register(instruments.scrapes)
    try:
        async with scraped(registry, options.scrape_interval, instruments.scrapes):
            yield instruments
    finally:
        await notifier.stop()


@asynccontextmanager
async def scraped(
    registry: CollectorRegistry, interval: float, scrapes: _ScrapeCount
) -> AsyncIterator[None]:
    """``registry`` on the real /metrics site, scraped by another process every ``interval``."""
    port = free_port()
    runner = web.AppRunner(metrics_app(registry), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/metrics"
    scraper = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRAPER, url, str(interval)
    )
    try:
        async with asyncio.timeout(10):  # the scraper is up before the clock starts
            while not scrapes.count:  # noqa: ASYNC110 - counted by the collector, no event
                await asyncio.sleep(0.01)
        yield
    finally:
        scraper.terminate()
        await scraper.wait()
        await runner.cleanup()


async def measure(
    size: int, subscribers: int, packets: int, options: Options, *, enabled: bool
) -> Run:
    """One run, with metrics and webhooks ``enabled`` or not, then ``options.idle_s`` without
    packets."""
    fan = await fan_out(subscribers, size, packets)
    async with AsyncExitStack() as stack:
        state = await stack.enter_async_context(node(fan, options.event_interval))
        instruments = None
        if enabled:
            instruments = await stack.enter_async_context(instrumented(state, fan, options))
        before = (instruments.scrapes.count, instruments.delivered()) if instruments else (0, 0)
        start = time.process_time()
        for offset in range(0, packets, BATCH):
            fan.feed(offset, min(offset + BATCH, packets))
            await asyncio.sleep(0)
        cpu = time.process_time() - start
        run = Run(cpu, packets * subscribers)
        if instruments is not None:  # during the timed part only
            run.scrapes = instruments.scrapes.count - before[0]
            run.webhooks = instruments.delivered() - before[1]
        idle_start = time.process_time()
        await asyncio.sleep(options.idle_s)
        run.idle_load = (time.process_time() - idle_start) / options.idle_s
        if instruments is not None:
            run.scrape_ms = instruments.scrape_cpu_ms()
            run.webhook_ms = await instruments.webhook_cpu_ms()
    fan.close()
    return run


COLUMNS = "size fan-out variant out_pkts cpu_s us/out_pkt out/cpu-s scrapes webhooks".split()


def _row(*values: object) -> str:
    return " ".join(f"{value:>10}" for value in values)


def _summary(off: list[Run], on: list[Run], options: Options) -> str:
    """Medians of each variant, the median of the paired (same repetition) cost, the cost
    between the best runs, and what one scrape and one webhook cost on their own."""
    median_off = statistics.median(r.us_per_out for r in off)
    median_on = statistics.median(r.us_per_out for r in on)
    paired = statistics.median(
        b.us_per_out / a.us_per_out - 1 for a, b in zip(off, on, strict=True)
    )
    scrape = statistics.median(r.scrape_ms for r in on)
    hook = statistics.median(r.webhook_ms for r in on)
    idle = statistics.median(r.idle_load for r in on) - statistics.median(r.idle_load for r in off)
    per_second = scrape / options.scrape_interval + hook / options.event_interval
    # Interference from other processes only ever adds CPU time, so the best run of each is
    # the least disturbed (timeit's reasoning).
    best_off, best_on = min(r.us_per_out for r in off), min(r.us_per_out for r in on)
    return (
        f"  us/out pkt median off {median_off:.2f}, on {median_on:.2f} "
        f"(out/cpu-s ratio on/off {median_off / median_on:.3f}); paired cost {paired:+.1%}; "
        f"best off {best_off:.2f}, on {best_on:.2f} (cost {best_on / best_off - 1:+.1%})\n"
        f"  one scrape {scrape:.2f} ms CPU, one webhook {hook:.2f} ms CPU: at these intervals "
        f"{per_second / 1000:.2%} of a core; measured without packets, metrics and webhooks "
        f"take {idle:.2%} of a core"
    )


def _wait_listening(port: int, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-packets", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--scrape-interval", type=float, default=0.1)
    parser.add_argument("--event-interval", type=float, default=0.1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1200])
    parser.add_argument("--fan-outs", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--idle", type=float, default=0.5, help="seconds without packets")
    args = parser.parse_args()
    hook_port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(hook_port)])
    _wait_listening(hook_port)
    hook_url = f"http://127.0.0.1:{hook_port}/"
    options = Options(args.scrape_interval, args.event_interval, hook_url, args.idle)
    print(_row(*COLUMNS))
    try:
        uvloop.run(measure(100, 10, 2000, options, enabled=True))  # warm-up: imports, caches
        for size in args.sizes:
            for subscribers in args.fan_outs:
                runs: dict[bool, list[Run]] = {False: [], True: []}
                for rep in range(args.repeat):
                    # Alternate which goes first, so a drift in machine load favours neither.
                    for enabled in (False, True) if rep % 2 == 0 else (True, False):
                        packets = max(200, args.out_packets // subscribers)
                        run = uvloop.run(
                            measure(size, subscribers, packets, options, enabled=enabled)
                        )
                        runs[enabled].append(run)
                        print(_row(size, f"1->{subscribers}", *run.cells(enabled)), flush=True)
                print(_summary(runs[False], runs[True], options), flush=True)
    finally:
        receiver.terminate()
        receiver.wait()


if __name__ == "__main__":
    main()
