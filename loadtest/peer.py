"""One client peer connection: a UDP socket of its own, the ICE agent, DTLS, SRTP, RTCP.

Datagrams are demultiplexed by first byte (RFC 7983): STUN to the ICE agent, DTLS to aiortc
(``adapter.py``), RTP and RTCP handled here without awaits. Received RTP is counted from its
clear header; only one packet in ``sample_every`` per stream is decrypted, which checks the
keys and authentication without paying for every packet. Subscribers send a PLI when a video
stream starts or loses packets, and Receiver Reports with REMB every second; publishers send
Sender Reports and answer PLI/FIR by restarting their clip's GOP.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import struct
import time
from typing import cast

import pylibsrtp

from loadtest import sink
from loadtest.dtls import DtlsLink
from loadtest.ice import Address, IceAgent, IceState
from loadtest.pacer import MediaSource
from loadtest.sdp_client import RemoteDescription, RemoteTrack
from loadtest.stats import StreamCounter
from protocol import rtcp
from sfu.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

RECEIVE_BUFFER = 4 << 20
#: The bandwidth subscribers report in REMB: plenty, so a congestion controller never holds
#: video back on loopback.
REMB_BPS = 30_000_000
KEYFRAME_REQUEST_INTERVAL_S = 1.0
#: Seconds between 1900 (NTP) and 1970 (Unix).
_NTP_OFFSET = 2_208_988_800


def open_socket(bind_address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
        try:  # FORCE passes net.core.rmem_max when we may (CAP_NET_ADMIN)
            sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER)
            break
        except OSError:
            continue
    sock.bind((bind_address, 0))
    sock.setblocking(False)
    return sock


#: An RTP header's sequence number and SSRC, read without slicing (RFC 3550 5.1).
_SEQUENCE_SSRC = struct.Struct("!2xH4xI")


class ClientPeer(asyncio.DatagramProtocol):
    """A peer connection of one participant.

    :param name: ``publisher`` or ``subscriber``, for logs.
    :param sample_every: decrypt one received packet in this many per stream.
    """

    def __init__(self, name: str, *, controlling: bool, sample_every: int) -> None:
        self.name = name
        self.ice = IceAgent(controlling=controlling, now=time.monotonic())
        self.dtls = DtlsLink(self._send_selected, controlling=controlling)
        self.sample_every = max(1, sample_every)
        self.streams: dict[int, StreamCounter] = {}
        self.track_of_ssrc: dict[int, RemoteTrack] = {}
        self.sources: dict[int, MediaSource] = {}
        self.connected: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.first_media: float | None = None
        self.packets_out = 0
        self.octets_out = 0
        self.rtcp_ssrc = secrets.randbelow(0xFFFFFFF0) + 1
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_pli: dict[int, float] = {}
        self.local_port = 0
        self._socket: socket.socket | None = None
        self.sinking = False
        """RTP is dropped by the kernel (``--sink``)."""

    async def open(self, bind_address: str) -> None:
        sock = open_socket(bind_address)
        self._socket = sock
        self.local_port = int(sock.getsockname()[1])
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, sock=sock)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        logger.debug("x %s udp error: %s", self.name, exc)

    # --- negotiation ---------------------------------------------------------------------

    def start(self, remote: RemoteDescription, *, dtls_client: bool) -> None:
        """Apply the server's description (its first, or a renegotiation) and connect."""
        self.ice.set_remote(remote.ice_ufrag, remote.ice_pwd, lite=remote.ice_lite)
        for address, port, _ in remote.candidates:
            self.ice.add_candidate((address, port))
        self.set_tracks(remote.tracks)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._connect(remote, dtls_client), name=f"{self.name}-connect"
            )
        self._poll_ice()

    def add_candidate(self, address: Address) -> None:
        self.ice.add_candidate(address)
        self._poll_ice()

    def set_tracks(self, tracks: tuple[RemoteTrack, ...]) -> None:
        for track in tracks:
            for ssrc in track.ssrcs:
                self.track_of_ssrc[ssrc] = track

    async def _connect(self, remote: RemoteDescription, dtls_client: bool) -> None:
        try:
            while self.ice.state is not IceState.CONNECTED:
                if self.ice.state is IceState.FAILED:
                    raise ConnectionError("ICE failed: no candidate answered")
                await asyncio.sleep(0.01)
            if not await self.dtls.connect(client=dtls_client, fingerprints=remote.fingerprints):
                raise ConnectionError("DTLS handshake failed")
            if remote.sctp_port is not None:
                await self.dtls.start_sctp(remote.sctp_port)
        except (ConnectionError, OSError) as exc:
            if not self.connected.done():
                self.connected.set_exception(ConnectionError(f"{self.name}: {exc}"))
                self.connected.exception()  # retrieved: the joiner may have given up
            return
        if not self.connected.done():
            self.connected.set_result(True)

    def _poll_ice(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for data, address in self.ice.poll(time.monotonic()):
            self._sendto(data, address)
        if self.ice.state in (IceState.NEW, IceState.CHECKING):
            self._timer = asyncio.get_running_loop().call_later(0.05, self._poll_ice)

    # --- datagrams -----------------------------------------------------------------------

    def _sendto(self, data: bytes, address: Address) -> None:
        if self._transport is not None:
            self._transport.sendto(data, address)

    def _send_selected(self, data: bytes) -> None:
        selected = self.ice.selected
        if selected is not None and self._transport is not None:
            self._transport.sendto(data, selected)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if len(data) < 4:
            return
        first = data[0]
        if 127 < first < 192:
            if 191 < data[1] < 224:
                self._on_rtcp(data)
            elif len(data) >= 12:
                self._on_rtp(data)
        elif first < 4:
            for reply, address in self.ice.handle(data, addr):
                self._sendto(reply, address)
        elif 19 < first < 64:
            self.dtls.feed(data)

    def _on_rtp(self, data: bytes) -> None:
        sequence, ssrc = _SEQUENCE_SSRC.unpack_from(data)
        stream = self.streams.get(ssrc)
        if stream is None:
            stream = self._new_stream(ssrc, sequence)
        gap = stream.on_packet(sequence, len(data))
        if gap and stream.kind == "video":
            self._request_keyframe(ssrc)
        if self.sample_every == 1 or stream.packets % self.sample_every == 1:
            rx = self.dtls.rx
            if rx is not None:
                try:
                    rx.unprotect(data)
                    stream.srtp_ok += 1
                except pylibsrtp.Error:
                    stream.srtp_errors += 1

    def _new_stream(self, ssrc: int, sequence: int) -> StreamCounter:
        track = self.track_of_ssrc.get(ssrc)
        kind = track.kind if track is not None else "unknown"
        stream = StreamCounter(sequence, kind, track.track_sid if track is not None else "")
        self.streams[ssrc] = stream
        if self.first_media is None:
            self.first_media = time.monotonic()
        if kind == "video":
            # Decoding starts at a keyframe: ask for one as the stream starts (LiveKit's
            # load tester does the same).
            self._request_keyframe(ssrc)
        return stream

    def _on_rtcp(self, data: bytes) -> None:
        rx = self.dtls.rx
        if not self.sources or rx is None:
            return  # subscribers get Sender Reports they have no use for
        try:
            clear = rx.unprotect_rtcp(data)
        except pylibsrtp.Error:
            return
        for ssrc in rtcp.keyframe_requests(clear):
            source = self.sources.get(ssrc)
            if source is not None:
                source.request_keyframe()

    # --- sending -------------------------------------------------------------------------

    def send_rtp(self, packet: bytes) -> None:
        protector = self.dtls.protector
        selected = self.ice.selected
        if protector is None or selected is None or self._transport is None:
            return
        protected = protector.protect(packet)
        if protected is not None:
            self._transport.sendto(protected, selected)
            self.packets_out += 1
            self.octets_out += len(packet)

    def send_rtcp(self, packet: bytes) -> None:
        tx = self.dtls.tx
        if tx is not None:
            self._send_selected(tx.protect_rtcp(packet))

    def _request_keyframe(self, ssrc: int) -> None:
        now = time.monotonic()
        if now - self._last_pli.get(ssrc, -1e9) >= KEYFRAME_REQUEST_INTERVAL_S:
            self._last_pli[ssrc] = now
            self.send_rtcp(rtcp.pli(self.rtcp_ssrc, ssrc))

    def tick(self, now: float, wall: float) -> None:
        """Once a second: consent checks, RTCP reports."""
        for data, address in self.ice.poll(now):
            self._sendto(data, address)
        if self.dtls.tx is None:
            return
        if self.streams:
            self.send_rtcp(self._receiver_reports())
        if self.sources:
            self.send_rtcp(self._sender_reports(now, wall))

    def _receiver_reports(self) -> bytes:
        """Receiver Reports (RFC 3550 6.4.2), 31 blocks each, then one REMB for video."""
        blocks = []
        for ssrc, stream in self.streams.items():
            fraction, cumulative = stream.report_interval()
            loss = (fraction << 24) | (cumulative & 0xFFFFFF)
            blocks.append(struct.pack("!IIIIII", ssrc, loss, stream.highest & 0xFFFFFFFF, 0, 0, 0))
        out = b""
        for start in range(0, len(blocks), 31):
            chunk = blocks[start : start + 31]
            count = len(chunk)
            out += struct.pack("!BBHI", 0x80 | count, rtcp.RR, 6 * count + 1, self.rtcp_ssrc)
            out += b"".join(chunk)
        video = [ssrc for ssrc, stream in self.streams.items() if stream.kind == "video"]
        if video:
            out += rtcp.remb(self.rtcp_ssrc, REMB_BPS, video[:255])
        return out

    def _sender_reports(self, now: float, wall: float) -> bytes:
        """A Sender Report (RFC 3550 6.4.1) per source: the NTP time of ``wall`` and the
        source's RTP time for the same instant."""
        seconds = wall + _NTP_OFFSET
        ntp = (int(seconds) << 32) | int((seconds % 1) * (1 << 32))
        out = b""
        for ssrc, source in self.sources.items():
            writer = source.packetizer.writer
            payload = writer.octets - writer.packets * writer.header_size
            rtp_time = source.rtp_time(now) & 0xFFFFFFFF
            out += rtcp.sender_report(ssrc, ntp, rtp_time, writer.packets, payload)
        return out

    def sink_when_flowing(self, expected_tracks: int) -> None:
        """``--sink``: once every expected track has delivered a few packets, the kernel
        drops RTP on this socket (``sink.py``)."""
        if self.sinking or self._socket is None:
            return
        packets = {ssrc: stream.packets for ssrc, stream in self.streams.items()}
        tracks = {ssrc: stream.track_sid for ssrc, stream in self.streams.items()}
        if sink.media_flowing(packets, tracks, expected_tracks):
            sink.drop_rtp(self._socket)
            self.sinking = True

    # --- end -----------------------------------------------------------------------------

    def received(self) -> tuple[int, int, int, int, int]:
        """(packets, octets, packets expected from the sequence numbers, audio packets, audio
        streams that have received) so far."""
        packets = octets = expected = audio_packets = audio_streams = 0
        for stream in self.streams.values():
            packets += stream.packets
            octets += stream.octets
            expected += stream.expected
            if stream.kind == "audio" and stream.packets:
                audio_packets += stream.packets
                audio_streams += 1
        return packets, octets, expected, audio_packets, audio_streams

    async def close(self) -> None:
        for source in self.sources.values():
            source.active = False
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            await cancel_and_wait(self._task)
        await self.dtls.close()
        if self._transport is not None:
            self._transport.close()
        if not self.connected.done():
            self.connected.cancel()
