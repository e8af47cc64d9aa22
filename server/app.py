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
from sfu.ice import UdpMux
from sfu.room import RoomSettings
from sfu.rooms import RoomManager
from sfu.rtc_adapter import Endpoint, host_addresses
from signaling.http import SignalingContext, add_routes

logger = logging.getLogger(__name__)


def server_version() -> str:
    try:
        return metadata.version("livekit-py-server")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def build_app(config: Config, endpoint: Endpoint) -> web.Application:
    """The aiohttp application with every route; rooms start and stop with it."""
    rooms = RoomManager(
        RoomSettings(
            empty_timeout=config.room.empty_timeout,
            departure_timeout=config.room.departure_timeout,
            max_participants=config.room.max_participants,
        ),
        auto_create=config.room.auto_create,
    )
    app = web.Application(client_max_size=config.limit.max_api_request_body_size)
    ctx = SignalingContext(
        config=config,
        rooms=rooms,
        node_id=node_id_for_host(socket.gethostname()),
        version=server_version(),
        endpoint=endpoint,
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
    endpoint = await open_endpoint(config)
    runner = web.AppRunner(build_app(config, endpoint), handle_signals=False, access_log=None)
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
        endpoint.mux.close()


async def open_endpoint(config: Config) -> Endpoint:
    """Bind the node's WebRTC UDP socket: ``rtc.udp_port``, or else the first free port of
    ``rtc.port_range_start..end`` (shared by all participants; one socket per participant in
    the range is not implemented yet)."""
    rtc = config.rtc
    ports = [rtc.udp_port] if rtc.udp_port else range(rtc.port_range_start, rtc.port_range_end + 1)
    loop = asyncio.get_running_loop()
    last_error: OSError | None = None
    for port in ports:
        try:
            transport, mux = await loop.create_datagram_endpoint(
                UdpMux, local_addr=("0.0.0.0", port)
            )
        except OSError as exc:
            last_error = exc
            continue
        bound = int(transport.get_extra_info("sockname")[1])
        addresses = host_addresses(
            rtc.node_ip, add_loopback=rtc.enable_loopback_candidate or config.development
        )
        logger.info("WebRTC UDP on port %d, advertising %s", bound, ", ".join(addresses))
        return Endpoint(mux=mux, port=bound, addresses=tuple(addresses))
    raise OSError(f"cannot bind a WebRTC UDP port ({ports[0]}-{ports[-1]}): {last_error}")


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
