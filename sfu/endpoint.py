"""Where the node receives WebRTC traffic: UDP sockets, the ICE-TCP listener, candidates."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

from sfu import fanout
from sfu.guard import SourceLimiter
from sfu.ice import IceRegistry, TcpIceConnection, UdpMux

logger = logging.getLogger(__name__)

#: Socket buffers of the shared media socket. Linux's default 208 KiB receive buffer overflows
#: in a burst of joins or a 1 -> N fan-out and drops packets before we see them (LiveKit warns
#: below 5 MB, ``UDP receive buffer is too small``).
SHARED_SOCKET_BUFFER = 8 * 1024 * 1024
#: SO_RCVBUFFORCE / SO_SNDBUFFORCE (Linux): exceed net.core.[rw]mem_max with CAP_NET_ADMIN.
_FORCE = {socket.SO_RCVBUF: 33, socket.SO_SNDBUF: 32}


def media_bind_address(bind_addresses: tuple[str, ...]) -> str:
    """Where media sockets listen: the one HTTP ``bind_addresses`` entry when exactly one IPv4
    address is set (a server bound to 127.0.0.1 must not take media from the network), else
    every interface, as LiveKit's UDP mux does; ``rtc.node_ip`` says what is advertised."""
    if len(bind_addresses) == 1 and ":" not in bind_addresses[0]:
        return bind_addresses[0]
    return "0.0.0.0"


@dataclass(frozen=True)
class Endpoint:
    """The sockets one participant's peer connections use, and the candidates naming them.

    :param dedicated: the UDP socket belongs to this participant alone (``rtc.port_range_*``
        mode) and closes with it.
    """

    registry: IceRegistry
    udp: UdpMux
    udp_port: int
    tcp_port: int
    addresses: tuple[str, ...]
    dedicated: bool = False
    enabled_codecs: tuple[str, ...] = ()
    """Mime types this node negotiates (``room.enabled_codecs``)."""

    def candidates(self, *, tcp_only: bool = False) -> tuple[str, ...]:
        """Host candidates, UDP then passive TCP (RFC 6544), priorities per RFC 8445 5.1.2.1
        with type preference 126 and UDP preferred over TCP. ``tcp_only``: the TCP ones alone
        (a client's ICE preference, LiveKit's ``switch_candidate_protocol``), unless ICE-TCP
        is off, when a client without UDP could not connect at all."""
        tcp_only = tcp_only and bool(self.tcp_port)
        found = []
        for index, address in enumerate(self.addresses):
            local = 65535 - index
            if not tcp_only:
                found.append(
                    f"candidate:{index + 1} 1 udp {(126 << 24) | (local << 8) | 255} "
                    f"{address} {self.udp_port} typ host generation 0"
                )
            if self.tcp_port:
                found.append(
                    f"candidate:{index + 101} 1 tcp {(126 << 24) | ((local - 32768) << 8) | 255} "
                    f"{address} {self.tcp_port} typ host tcptype passive generation 0"
                )
        return tuple(found)

    def release(self) -> None:
        if self.dedicated:
            self.udp.close()


class Endpoints:
    """Hands each participant its endpoint: the node's one UDP port (``rtc.udp_port``) or a
    socket of its own from ``rtc.port_range_start..end``; ICE-TCP on ``rtc.tcp_port``."""

    def __init__(
        self,
        addresses: tuple[str, ...],
        *,
        udp_port: int,
        port_range: tuple[int, int],
        tcp_port: int,
        enabled_codecs: tuple[str, ...] = (),
        tcp_limiter: SourceLimiter | None = None,
        bind_address: str = "0.0.0.0",
    ) -> None:
        self.registry = IceRegistry()
        self.addresses = addresses
        self._udp_port = udp_port
        self._port_range = port_range
        self._tcp_port = tcp_port
        self._codecs = enabled_codecs
        self._tcp_limiter = tcp_limiter
        self._bind_address = bind_address
        """Where the media sockets listen (``sfu/endpoint.py media_bind_address``)."""
        self._shared: Endpoint | None = None
        self._tcp_server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.registry.start()
        if self._tcp_port:
            self._tcp_server = await loop.create_server(
                lambda: TcpIceConnection(self.registry, self._tcp_limiter),
                self._bind_address,
                self._tcp_port,
            )
        if self._udp_port:
            self._shared = await self._bind([self._udp_port], dedicated=False)
            logger.info("WebRTC on UDP port %d, TCP port %d", self._udp_port, self._tcp_port)
        else:
            start, end = self._port_range
            logger.info("WebRTC on UDP ports %d-%d, TCP port %d", start, end, self._tcp_port)
        logger.info("advertising %s", ", ".join(self.addresses))
        fanout.log_implementation(logger)

    async def acquire(self) -> Endpoint:
        if self._shared is not None:
            return self._shared
        start, end = self._port_range
        return await self._bind(range(start, end + 1), dedicated=True)

    async def _bind(self, ports: range | list[int], *, dedicated: bool) -> Endpoint:
        loop = asyncio.get_running_loop()
        for port in ports:
            try:
                transport, mux = await loop.create_datagram_endpoint(
                    lambda: UdpMux(self.registry), local_addr=(self._bind_address, port)
                )
            except OSError:
                continue
            bound = int(transport.get_extra_info("sockname")[1])
            if not dedicated:
                grow_buffers(transport.get_extra_info("socket"), bound)
            return Endpoint(
                self.registry,
                mux,
                bound,
                self._tcp_port,
                self.addresses,
                dedicated=dedicated,
                enabled_codecs=self._codecs,
            )
        raise OSError(f"no free UDP port in {ports[0]}-{ports[-1]}")

    async def stop(self) -> None:
        await self.registry.stop()
        if self._shared is not None:
            self._shared.udp.close()
        if self._tcp_server is not None:
            self._tcp_server.close()
            await self._tcp_server.wait_closed()


def grow_buffers(sock: socket.socket | None, port: int) -> None:
    """Ask for :data:`SHARED_SOCKET_BUFFER` each way; warn, as LiveKit does, when the kernel
    grants less (raise net.core.rmem_max / wmem_max, or run with CAP_NET_ADMIN)."""
    if sock is None:
        return
    for option, name in ((socket.SO_RCVBUF, "receive"), (socket.SO_SNDBUF, "send")):
        try:
            sock.setsockopt(socket.SOL_SOCKET, _FORCE[option], SHARED_SOCKET_BUFFER)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SHARED_SOCKET_BUFFER)
            except OSError as exc:
                logger.debug("x UDP %s buffer not set: %s", name, exc)
        granted = sock.getsockopt(socket.SOL_SOCKET, option) // 2  # Linux reports double
        if granted < SHARED_SOCKET_BUFFER:
            logger.warning(
                "UDP %s buffer of port %d is %d KiB, below the %d KiB asked for: raise "
                "net.core.%smem_max",
                name,
                port,
                granted // 1024,
                SHARED_SOCKET_BUFFER // 1024,
                "r" if option == socket.SO_RCVBUF else "w",
            )
