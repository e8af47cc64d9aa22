"""Before anything starts: are the ports this node (or each of its workers) needs free?

A port already in use is one line naming the port and exit status 1, not a worker that
registers as SERVING, fails to bind and is restarted over and over.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

from config import Config
from sfu.endpoint import media_bind_address


class PortInUseError(OSError):
    """One line for the operator: which port, which address, what uses it."""


def _needed(config: Config, workers: int) -> Iterator[tuple[str, int, str, int]]:
    """(what, port, host, socket type) of every listening port of ``workers`` workers."""
    hosts = list(config.bind_addresses) or ["0.0.0.0"]
    for host in hosts:
        yield "HTTP", config.port, host, socket.SOCK_STREAM
    rtc = config.rtc
    media_host = media_bind_address(config.bind_addresses)
    metrics_port = config.metrics_port
    for index in range(workers):
        if rtc.udp_port:
            yield "WebRTC UDP (rtc.udp_port)", rtc.udp_port + index, media_host, socket.SOCK_DGRAM
        if rtc.tcp_port:
            yield "ICE-TCP (rtc.tcp_port)", rtc.tcp_port + index, media_host, socket.SOCK_STREAM
        if metrics_port:
            for host in hosts:
                yield "Prometheus", metrics_port + index, host, socket.SOCK_STREAM


def check_ports(config: Config, workers: int) -> None:
    """Raise PortInUseError for the first needed port something else holds."""
    for what, port, host, kind in _needed(config, workers):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, kind) as probe:
            if kind == socket.SOCK_STREAM:
                # As the server will: a port left in TIME_WAIT by our last run is not "in use".
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise PortInUseError(f"{what} port {port} on {host}: {exc.strerror}") from None
                raise PortInUseError(
                    f"{what} port {port} on {host} is already in use (another server running? "
                    "choose another port or stop it)"
                ) from None
