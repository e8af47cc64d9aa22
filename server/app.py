"""Composition root: builds the room manager and the HTTP application, runs them."""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import resource
import signal
import socket
import tempfile
import time
import tracemalloc
from importlib import metadata
from pathlib import Path
from typing import Any

from aiohttp import web

from config import Config
from config.build import duration_seconds
from routing.router import Router
from server.cluster import (
    NodeLoad,
    StoreSync,
    WorkerIdentity,
    local_node,
    open_backends,
    sibling_node_ids,
)
from server.membership import CLUSTER, Membership, install_cluster
from server.memory import (
    GarbageCollector,
    MemoryTrimmer,
    find_malloc_trim,
    freeze_startup_objects,
    write_allocator_stats,
)
from server.metrics import MetricsSources
from server.metrics_http import install_metrics
from sfu.congestion import congestion_settings
from sfu.endpoint import Endpoints, media_bind_address
from sfu.events import EventBus
from sfu.guard import SourceLimiter
from sfu.limits import Limits
from sfu.room import RoomSettings
from sfu.rooms import RoomManager
from sfu.rtc_adapter import host_addresses
from signaling.agent_socket import add_agent_routes
from signaling.agents import AgentService
from signaling.http import SignalingContext, add_routes
from signaling.http_guard import GuardedRunner
from signaling.webhooks import install_webhooks

logger = logging.getLogger(__name__)


def server_version() -> str:
    try:
        return metadata.version("livekit-py-server")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def build_app(
    config: Config, endpoints: Endpoints, worker: WorkerIdentity | None = None
) -> web.Application:
    """The aiohttp application with every route; rooms and cluster membership start and stop
    with it."""
    worker = worker or WorkerIdentity()
    events = EventBus()
    rooms = RoomManager(
        RoomSettings(
            empty_timeout=config.room.empty_timeout,
            departure_timeout=config.room.departure_timeout,
            max_participants=config.room.max_participants,
            limits=Limits.from_config(config),
            audio=config.audio,
            dynacast_pause_delay=duration_seconds(config.video.dynacast_pause_delay),
            congestion=congestion_settings(config.rtc.congestion_control),
        ),
        auto_create=config.room.auto_create,
        events=events,
    )
    app = web.Application(client_max_size=config.limit.max_api_request_body_size)
    backends = open_backends(config, worker)
    advertised = endpoints.addresses[0] if endpoints.addresses else ""
    router = Router(
        local_node(config, worker, advertised),
        backends.store,
        backends.bus,
        config.node_selector,
        NodeLoad(rooms),
    )
    sync = StoreSync(rooms, router)
    agents = AgentService(rooms)
    events.subscribe(agents)
    ctx = SignalingContext(
        config=config,
        rooms=rooms,
        node_id=router.node_id,
        version=server_version(),
        endpoints=endpoints,
        router=router,
        publish_room=sync.publish,
        agents=agents,
    )
    add_routes(app, ctx)
    add_agent_routes(app, agents)
    app[CLUSTER] = install_cluster(app, ctx, backends, sync, sibling_node_ids(config, worker))
    notifier = install_webhooks(app, config, events)
    install_metrics(
        app,
        config,
        node_id=ctx.node_id,
        events=events,
        sources=MetricsSources(
            rooms,
            twirp_stats=lambda: ctx.twirp_stats,
            webhook_counts=lambda: notifier.counts,
        ),
        port_offset=worker.index,
    )

    trimmer = MemoryTrimmer(find_malloc_trim())
    collector = GarbageCollector()

    async def start_rooms(app: web.Application) -> None:
        rooms.start()
        trimmer.start()
        collector.start()

    async def stop_rooms(app: web.Application) -> None:
        # On shutdown, before aiohttp waits for open WebSockets: every participant gets a
        # leave with SERVER_SHUTDOWN, which ends its session.
        await trimmer.stop()
        await collector.stop()
        await rooms.stop()
        await agents.close()

    app.on_startup.append(start_rooms)
    app.on_shutdown.append(stop_rooms)
    return app


def _listening_socket(host: str, port: int, shared: bool) -> socket.socket:
    """A TCP socket bound and listening on ``host:port`` (``SO_REUSEPORT`` when workers share
    the port); OSError naming the port when it is taken."""
    try:
        return socket.create_server(
            (host, port),
            family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            backlog=1024,
            reuse_port=shared,
        )
    except OSError as exc:
        raise OSError(f"HTTP port {port} on {host}: {exc.strerror}") from None


def raise_file_limit() -> None:
    """Take the hard limit of open files as the soft one: every participant holds sockets and
    the default soft limit (1024) is reached by a few hundred clients, or by idle
    connections an attacker opens (LiveKit's docs ask operators to raise it too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        logger.warning("could not raise the open-file limit from %d: %s", soft, exc)


async def run_server(config: Config, worker: WorkerIdentity | None = None) -> None:
    """Serve until SIGINT or SIGTERM, which drain the node; a second signal closes the rooms
    (participants are told SERVER_SHUTDOWN) and exits, a third exits at once."""
    worker = worker or WorkerIdentity()
    raise_file_limit()
    rtc = config.rtc
    media_host = media_bind_address(config.bind_addresses)
    addresses = host_addresses(
        # Media sockets bound to one address can only be reached there (--dev: 127.0.0.1).
        rtc.node_ip or (media_host if media_host != "0.0.0.0" else ""),
        add_loopback=rtc.enable_loopback_candidate or config.development,
    )
    # Workers of one machine: one UDP and one ICE-TCP port each, counted up from the
    # configured ones, so media reaches the worker hosting the room.
    endpoints = Endpoints(
        tuple(addresses),
        udp_port=rtc.udp_port + worker.index if rtc.udp_port else 0,
        port_range=(rtc.port_range_start, rtc.port_range_end),
        tcp_port=rtc.tcp_port + worker.index if rtc.tcp_port else 0,
        enabled_codecs=tuple(codec.mime for codec in config.room.enabled_codecs),
        tcp_limiter=SourceLimiter(config.limit.max_connections_per_source),
        bind_address=media_host,
    )
    await endpoints.start()
    hosts = list(config.bind_addresses) or ["0.0.0.0"]
    try:
        # Bound before the node registers as SERVING (on the app's startup): a node that
        # cannot take its HTTP port must never be offered rooms.
        sockets = [_listening_socket(host, config.port, worker.count > 1) for host in hosts]
    except OSError:
        await endpoints.stop()
        raise
    app = build_app(config, endpoints, worker)
    limiter = SourceLimiter(config.limit.max_connections_per_source)
    runner = GuardedRunner(app, limiter, handle_signals=False, access_log=None)
    await runner.setup()
    freeze_startup_objects()
    signals = SignalWatch()
    try:
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        logger.info(
            "livekit-py-server %s listening on %s port %d",
            server_version(),
            ", ".join(hosts),
            config.port,
        )
        await signals.wait(1)
        logger.info("signal received: draining (a second signal closes the rooms now)")
        await _drain_or_second_signal(app[CLUSTER], signals)
        logger.info("shutting down: closing rooms")
    finally:
        await runner.cleanup()
        await endpoints.stop()


async def _drain_or_second_signal(membership: Membership, signals: SignalWatch) -> None:
    drain = asyncio.ensure_future(membership.drain())
    second = asyncio.ensure_future(signals.wait(2))
    await asyncio.wait({drain, second}, return_when=asyncio.FIRST_COMPLETED)
    for task in (drain, second):
        task.cancel()
    await asyncio.gather(drain, second, return_exceptions=True)


def _log_tasks() -> None:
    """SIGUSR1: log every asyncio task and where it waits (for a node that will not stop)."""
    for task in asyncio.all_tasks():
        frames: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None and len(frames) < 30:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is not None:
                frames.append(f"{frame.f_code.co_filename}:{frame.f_lineno}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        logger.warning("task %s: %s", task.get_name(), " -> ".join(frames) or "(no frames)")


def _log_memory() -> None:
    """SIGUSR2: log the most numerous object types (a leak shows as a type that keeps
    growing between two signals), write pymalloc's and glibc's statistics to stderr and, when
    the process was started with ``PYTHONTRACEMALLOC``, write a tracemalloc snapshot to
    compare with ``tracemalloc``."""
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    top = ", ".join(f"{name} {count}" for name, count in counts.most_common(25))
    logger.warning("objects by type: %s", top)
    logger.warning(
        "gc: %d tracked, %d frozen, counts %s, stats %s",
        len(gc.get_objects()),
        gc.get_freeze_count(),
        gc.get_count(),
        gc.get_stats(),
    )
    write_allocator_stats()
    if tracemalloc.is_tracing():
        path = Path(tempfile.gettempdir()) / f"livekit-py-server-{os.getpid()}-{time.time():.0f}"
        tracemalloc.take_snapshot().dump(str(path))
        logger.warning("tracemalloc snapshot written to %s", path)


class SignalWatch:
    """Counts SIGINT/SIGTERM; the third exits the process without cleaning up."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        loop.add_signal_handler(signal.SIGUSR1, _log_tasks)
        loop.add_signal_handler(signal.SIGUSR2, _log_memory)

    def _on_signal(self) -> None:
        self.count += 1
        if self.count >= 3:
            logger.warning("third signal: exiting now")
            os._exit(1)
        self._changed.set()

    async def wait(self, count: int) -> None:
        while self.count < count:
            self._changed.clear()
            await self._changed.wait()
