"""Forwarding benchmark: one publisher's SRTP packets to N subscribers through the real path.

Per incoming packet: ``UdpMux.datagram_received`` (demultiplexing by source address), SRTP
unprotect (libsrtp), ``TrackReceiver.on_packet``, and per subscriber
``DownTrack.write`` (munger, header rewrite into its buffer), SRTP protect with that
subscriber's own session, ``IceSession.send`` -> ``UdpMux.sendto`` -> the event loop's UDP
socket on loopback. Keys are fixed instead of coming from DTLS;
everything after is the
server's own code. CPU time is this process's (``time.process_time``), so the figures are
machine-independent ratios: CPU microseconds per forwarded packet and packets out per
CPU-second.

    .venv/bin/python -m benchmarks.forwarding [--packets N] [--loop uvloop|asyncio] [--no-batch]
        [--svc] [--twcc] [--tracks K] [--shared-session]

``--tracks K`` makes each subscriber's transport also carry K - 1 other tracks, as in a meeting
of K tracks. By default each downtrack protects with a libsrtp session of its own, as the
server's do; ``--shared-session`` protects with the transport's one session instead, where
libsrtp finds each packet's stream by walking the list of every SSRC the session protected.

``--twcc`` gives every downtrack a transport-wide sequence number to stamp (each subscriber
transport numbering its packets and remembering their send times, as for video subscribers that
negotiate transport-cc); the difference to a run without is what congestion control costs on
the packet path.

``--svc`` sends scalable VP9 instead (three spatial layers, one packet each per picture, every
picture a keyframe so subscribers settle at once), the subscribers spread evenly over the three
layers they ask for: the descriptor is read per packet and each layer group fanned out or
skipped (``sfu/svc.py``). "out pkts" counts what was really sent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import struct
import time
from dataclasses import dataclass

from aioice import stun
from livekit.protocol import models
from pylibsrtp import Policy, Session

from protocol.sdp_media import TWCC_URI, Codec, OutgoingTrack
from sfu.downtrack import TWCC_EXTENSION_ID, DownTrack
from sfu.fanout import Sink
from sfu.ice import IceRegistry, IceSession, UdpMux
from sfu.receiver import TrackReceiver
from sfu.srtp import SrtpProtector
from sfu.svc import SPATIAL_LAYERS, SvcTrack

KEY = bytes(range(30))  # AES_CM_128 key (16) + salt (14)
CODEC = Codec(111, "audio/opus", 48000, 2)
VP9 = Codec(98, "video/VP9", 90000)


def _ignore(_: bytes) -> None:
    return None


def _session(direction: int, window: int = 1024) -> Session:
    policy = Policy(
        key=KEY, ssrc_type=direction, srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    )
    policy.allow_repeat_tx = True
    policy.window_size = window
    return Session(policy)


def _own_session(downtrack: object) -> tuple[int, object]:
    """A downtrack's own transmit session, as ``DtlsSession.outbound_session`` makes them."""
    protector = SrtpProtector(_session(Policy.SSRC_ANY_OUTBOUND, window=64))
    return protector.context_address, protector


def _other_streams(protector: SrtpProtector, tracks: int, ssrc: int) -> None:
    """The transport's session holds the streams of ``tracks - 1`` other tracks, half made
    before this one's and half after."""
    others = [10_000 + j for j in range(tracks - 1)]
    half = len(others) // 2
    for other in [*others[:half], ssrc, *others[half:]]:
        protector.protect(struct.pack("!BBHII", 0x80, 111, 0, 0, other) + b"x")


def _select_path(
    registry: IceRegistry, mux: UdpMux, session: IceSession, sink: tuple[str, int]
) -> None:
    """Make ``session`` send to ``sink`` the way a real client's binding request would."""
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, secrets.token_bytes(12))
    request.attributes["USERNAME"] = f"{session.local_ufrag}:bench"
    request.add_message_integrity(session.local_pwd.encode())
    request.add_fingerprint()
    mux.datagram_received(bytes(request), sink)


@dataclass
class FanOut:
    """One publisher's track fanned out to subscribers through the real path, ready to feed."""

    transport: asyncio.DatagramTransport
    mux: UdpMux
    sink: socket.socket
    receiver: TrackReceiver
    incoming: list[bytes]
    publisher_addr: tuple[str, int]
    clock: list[float]

    def feed(self, start: int, stop: int) -> None:
        """Deliver incoming packets ``start`` to ``stop`` (20 ms apart on the receiver's clock)."""
        mux, incoming, address, clock = self.mux, self.incoming, self.publisher_addr, self.clock
        for index in range(start, stop):
            clock[0] = index * 0.02
            mux.datagram_received(incoming[index], address)

    def close(self) -> None:
        # Sanity check that packets really reached the socket: the sink holds some of them.
        self.sink.setblocking(False)
        if not self.sink.recv(2048):
            raise RuntimeError("nothing was sent")
        self.transport.close()
        self.sink.close()


def _vp9_descriptor(sequence: int) -> bytes:
    """RFC 9628, one packet per layer frame: B and E set, 15-bit picture id, the layer
    indices, TL0PICIDX; every picture a keyframe."""
    spatial, picture = sequence % SPATIAL_LAYERS, sequence // SPATIAL_LAYERS
    return bytes((0xAC, 0x80 | (picture >> 8) & 0x7F, picture & 0xFF, spatial << 1, 0))


async def fan_out(
    subscribers: int,
    size: int,
    packets: int,
    batch: bool = True,
    svc: bool = False,
    twcc: bool = False,
    tracks: int = 1,
    own_sessions: bool = True,
) -> FanOut:
    loop = asyncio.get_running_loop()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))  # never read: the kernel drops what does not fit
    registry = IceRegistry()
    transport, mux = await loop.create_datagram_endpoint(
        lambda: UdpMux(registry, batch=batch), local_addr=("127.0.0.1", 0)
    )
    codec = VP9 if svc else CODEC
    receiver = TrackReceiver(codec, 1234, lambda _: None)
    if svc:
        receiver.svc = SvcTrack(models.TrackInfo(sid="TR_bench", mime_type=VP9.mime))
    for index in range(subscribers):
        ice = registry.create_session(f"sub{index}")
        _select_path(registry, mux, ice, sink.getsockname())
        if ice.selected is None:
            raise RuntimeError("benchmark set-up failed: no ICE path selected")
        # The same protect-and-send as PeerConnection.send_rtp, minus the DTLS lookup.
        protector = SrtpProtector(_session(Policy.SSRC_ANY_OUTBOUND))

        def send(
            packet: memoryview, ice: IceSession = ice, protector: SrtpProtector = protector
        ) -> bool:
            protected = protector.protect(packet)
            if protected is None:
                return False
            ice.send(protected)
            return True

        # As PeerConnection does once DTLS is up: the C fan-out protects and sends by itself
        # on a batching UDP path (sfu/fanout.py); otherwise every packet takes send().
        rtp_sink = Sink(send)
        if own_sessions:

            def send_protected(data: memoryview, ice: IceSession = ice) -> bool:
                ice.send(bytes(data))
                return True

            rtp_sink.set_sessions(_own_session, send_protected)
        else:
            _other_streams(protector, tracks, 100 + index)
        destination = ice.selected.udp_destination()
        if destination is not None:
            rtp_sink.set_fast(protector.context_address, protector.session, *destination)
        kind = "video" if svc else "audio"
        extensions = ((TWCC_EXTENSION_ID, TWCC_URI),) if twcc else ()
        outgoing = OutgoingTrack(kind, "1", (codec,), extensions, "PA|TR", "TR", ssrc=100 + index)
        downtrack = DownTrack(outgoing, rtp_sink, _ignore, receiver)
        receiver.downtracks[str(index)] = downtrack
        if receiver.svc is not None:
            receiver.svc.subscribe(str(index), downtrack, index % SPATIAL_LAYERS, 0.0)
    publisher_tx, rx = _session(Policy.SSRC_ANY_OUTBOUND), _session(Policy.SSRC_ANY_INBOUND)
    payload = os.urandom(size - 12 - (5 if svc else 0))
    incoming = [
        publisher_tx.protect(
            struct.pack("!BBHII", 0x80, codec.payload_type, seq & 0xFFFF, seq * 960, 1234)
            + (_vp9_descriptor(seq) if svc else b"")
            + payload
        )
        for seq in range(packets)
    ]
    # The publisher's packets enter where a real one's do: the socket's datagram handler,
    # which routes them by source address to the publisher's ICE session.
    publisher = registry.create_session("publisher")
    publisher_addr = ("127.0.0.1", 9)
    _select_path(registry, mux, publisher, publisher_addr)
    clock = [0.0]
    publisher.on_datagram = lambda data: receiver.on_packet(rx.unprotect(data), clock[0])
    return FanOut(transport, mux, sink, receiver, incoming, publisher_addr, clock)


async def run(
    subscribers: int,
    size: int,
    packets: int,
    batch: bool,
    svc: bool = False,
    twcc: bool = False,
    tracks: int = 1,
    own_sessions: bool = True,
) -> tuple[float, int]:
    fan = await fan_out(subscribers, size, packets, batch, svc, twcc, tracks, own_sessions)
    start = time.process_time()
    fan.feed(0, packets)
    cpu = time.process_time() - start
    fan.close()
    return cpu, sum(d.packets for d in fan.receiver.downtracks.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument(
        "--no-batch", action="store_true", help="one sendto per datagram instead of sendmmsg"
    )
    parser.add_argument("--svc", action="store_true", help="scalable VP9, three layers")
    parser.add_argument(
        "--twcc", action="store_true", help="transport-wide sequence numbers on every packet"
    )
    parser.add_argument("--tracks", type=int, default=1, help="tracks each subscriber gets")
    parser.add_argument(
        "--shared-session",
        action="store_true",
        help="protect with the transport's one libsrtp session instead of one per downtrack",
    )
    args = parser.parse_args()
    runner = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    columns = ("size", "fan-out", "out pkts", "cpu s", "us/out pkt", "out/cpu-s")
    print(" ".join(f"{name:>10}" for name in columns))
    for size in (100, 1200):
        for subscribers in (1, 10, 100):
            packets = max(200, args.packets // subscribers)
            work = run(
                subscribers,
                size,
                packets,
                not args.no_batch,
                args.svc,
                args.twcc,
                args.tracks,
                not args.shared_session,
            )
            cpu, out = runner(work)
            row = (size, f"1->{subscribers}", out, f"{cpu:.3f}", f"{cpu / out * 1e6:.2f}")
            print(" ".join(f"{value:>10}" for value in row), f"{out / cpu:>10.0f}")


if __name__ == "__main__":
    main()
