"""Composition root: builds the room manager and the HTTP application, runs them."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from importlib import metadata

from aiohttp import web

from config import Config
from protocol.ids import node_id_for_host
from sfu.endpoint import Endpoints
from sfu.events import EventBus
from sfu.room import RoomSettings
from sfu.rooms import RoomManager
from sfu.rtc_adapter import host_addresses
from signaling.http import SignalingContext, add_routes

logger = logging.getLogger(__name__)


def server_version() -> str:
    try:
        return metadata.version("livekit-py-server")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def build_app(config: Config, endpoints: Endpoints) -> web.Application:
    """The aiohttp application with every route; rooms start and stop with it."""
    events = EventBus()
    rooms = RoomManager(
        RoomSettings(
            empty_timeout=config.room.empty_timeout,
            departure_timeout=config.room.departure_timeout,
            max_participants=config.room.max_participants,
        ),
        auto_create=config.room.auto_create,
        events=events,
    )
    app = web.Application(client_max_size=config.limit.max_api_request_body_size)
    ctx = SignalingContext(
        config=config,
        rooms=rooms,
        node_id=node_id_for_host(socket.gethostname()),
        version=server_version(),
        endpoints=endpoints,
    )
    add_routes(app, ctx)

    async def start_rooms(app: web.Application) -> None:
        rooms.start()

    async def stop_rooms(app: web.Application) -> None:
        # On shutdown, before aiohttp waits for open WebSockets: every participant gets a
        # leave with SERVER_SHUTDOWN, which ends its session.
        await rooms.stop()

    app.on_startup.append(start_rooms)
    app.on_shutdown.append(stop_rooms)
    return app


async def run_server(config: Config) -> None:
    """Serve until SIGINT or SIGTERM; a second signal exits at once."""
    rtc = config.rtc
    addresses = host_addresses(
        rtc.node_ip, add_loopback=rtc.enable_loopback_candidate or config.development
    )
    endpoints = Endpoints(
        tuple(addresses),
        udp_port=rtc.udp_port,
        port_range=(rtc.port_range_start, rtc.port_range_end),
        tcp_port=rtc.tcp_port,
        enabled_codecs=tuple(codec.mime for codec in config.room.enabled_codecs),
    )
    await endpoints.start()
    runner = web.AppRunner(build_app(config, endpoints), handle_signals=False, access_log=None)
    await runner.setup()
    hosts = list(config.bind_addresses) or ["0.0.0.0"]
    try:
        for host in hosts:
            await web.TCPSite(runner, host, config.port).start()
        logger.info(
            "livekit-py-server %s listening on %s port %d",
            server_version(),
            ", ".join(hosts),
            config.port,
        )
        await _wait_for_signal()
        logger.info("shutting down: closing rooms")
    finally:
        await runner.cleanup()
        await endpoints.stop()


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            logger.warning("second signal: exiting now")
            os._exit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
