"""Media between nodes: the packets of a participant forwarded to a room on another node.

Each node that forwards or receives a forward has one UDP socket for it (opened on first use,
an ephemeral port on the media bind address, advertised with the node's IP through the
router call that starts the forward). Every datagram names a *session*, 8 random bytes
agreed for one forward of one participant to one room over the cluster's control channel
(Redis); anything else is dropped and counted. The relay is plain RTP on the network between
nodes, as LiveKit's own node-to-node traffic is: its nodes share a private network.

A datagram is one byte of kind, the session, then:

- ``MEDIA``: the track's index in the forward (2 bytes), its spatial layer (1 byte), and
  the RTP packet as the source node received it (retransmissions already unwrapped);
- ``SENDER_REPORT``: index, layer, the publisher's NTP time (8) and RTP timestamp (4), so
  the destination's subscribers get Sender Reports for lip sync;
- ``FEEDBACK``: index, layer and an RTCP packet from the destination's copy of that stream
  (keyframe requests and NACKs; the source answers NACKs from its packet cache).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Protocol

from sfu.endpoint import grow_buffers
from sfu.ice import MALFORMED

logger = logging.getLogger(__name__)

MEDIA, SENDER_REPORT, FEEDBACK = 1, 2, 3
SESSION_BYTES = 8
#: kind, session, track index, spatial layer.
_HEADER = struct.Struct(f"!B{SESSION_BYTES}sHB")
HEADER_BYTES = _HEADER.size
_SENDER_REPORT = struct.Struct("!QI")


class RelayEndpoint(Protocol):
    """One end of a forward: the source's link or the destination's copy."""

    def on_relay(self, kind: int, index: int, spatial: int, body: bytes, now: float) -> None: ...


def header(kind: int, session: bytes, index: int, spatial: int) -> bytes:
    """A datagram's first bytes, before its body."""
    return _HEADER.pack(kind, session, index, spatial)


def sender_report_body(ntp: int, rtp_timestamp: int) -> bytes:
    return _SENDER_REPORT.pack(ntp & 0xFFFFFFFFFFFFFFFF, rtp_timestamp & 0xFFFFFFFF)


def read_sender_report(body: bytes) -> tuple[int, int] | None:
    if len(body) != _SENDER_REPORT.size:
        return None
    ntp, rtp_timestamp = _SENDER_REPORT.unpack(body)
    return ntp, rtp_timestamp


class MediaRelay(asyncio.DatagramProtocol):
    """This node's relay socket, and the sessions it serves by id.

    :param clock: the time packets are stamped with as they arrive.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.sessions: dict[bytes, RelayEndpoint] = {}
        self.address: tuple[str, int] = ("", 0)
        """(advertised IP, port) other nodes send to."""
        self.dropped = 0
        """Datagrams dropped: too short, of an unknown kind or session (also counted in
        ``livekit_malformed_packet_total{protocol="relay"}``)."""
        self._transport: asyncio.DatagramTransport | None = None
        self._starting: asyncio.Lock = asyncio.Lock()

    @property
    def started(self) -> bool:
        return self._transport is not None

    async def start(self, bind_host: str, advertised_ip: str) -> None:
        """Open the socket (once; later calls return at once)."""
        async with self._starting:
            if self._transport is not None:
                return
            family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self, local_addr=(bind_host, 0), family=family
            )
            self._transport = transport
            port = transport.get_extra_info("sockname")[1]
            # A node's worth of forwarded streams arrives here in bursts (keyframes).
            grow_buffers(transport.get_extra_info("socket"), port)
            # A socket bound to one address is reached there; else at the node's IP.
            wildcard = bind_host in ("0.0.0.0", "::")
            self.address = (advertised_ip or "127.0.0.1" if wildcard else bind_host, port)
            logger.info("media relay listening on %s port %d", bind_host, port)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def send(self, datagram: bytes, to: tuple[str, int]) -> None:
        if self._transport is not None:
            self._transport.sendto(datagram, to)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if len(data) < HEADER_BYTES:
            self._drop("short datagram", addr)
            return
        kind, session, index, spatial = _HEADER.unpack_from(data)
        endpoint = self.sessions.get(session)
        if endpoint is None or kind not in (MEDIA, SENDER_REPORT, FEEDBACK):
            self._drop("unknown session or kind", addr)
            return
        endpoint.on_relay(kind, index, spatial, data[HEADER_BYTES:], self._clock())

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the other node went away; its liveness check
        # ends the forward.
        logger.debug("media relay: %s", exc)

    def _drop(self, why: str, addr: tuple[str | int, ...]) -> None:
        self.dropped += 1
        peer = (str(addr[0]), int(addr[1])) if len(addr) >= 2 else ("?", 0)
        MALFORMED.drop("relay", peer, ValueError(why), self._clock())
