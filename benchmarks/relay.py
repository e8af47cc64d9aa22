"""Relay benchmark: what forwarding a track to a room on another node costs per packet.

Two relay sockets on loopback in one process stand for the two nodes. The source side is a
published track's receiver with a relay tap (``sfu/remote_forward.py TrackTaps``): each packet
given to ``TrackReceiver.on_packet`` also goes out as one datagram. The destination side is
the other node's ``MediaRelay`` with a ``RemoteCopy`` of the track, whose receiver takes each
datagram as a local publisher's packet (no subscribers, so what is measured is the relay
alone; fanning out at the destination costs what it costs for any local track,
``benchmarks/forwarding.py``).

CPU time is the process's (``time.process_time``): machine-independent ratios are the CPU
microseconds per relayed packet, sending and receiving ends apart, and packets per CPU-second.

    .venv/bin/python -m benchmarks.relay [--packets N]
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time
from typing import Any

from livekit.protocol import models

from protocol.sdp_media import Codec
from sfu.media_relay import MEDIA, MediaRelay, header
from sfu.receiver import PublishedTrack, TrackReceiver
from sfu.remote_forward import RemoteCopy, TapTarget, TrackOffer, TrackTaps

VP8 = Codec(96, "video/VP8", 90000, rtcp_fb=("nack", "nack pli"))
SESSION = b"benchmrk"
SSRC = 0x1234


class _Quiet:
    def send(self, method: str, body: dict[str, Any]) -> None:
        return None

    def close(self) -> None:
        return None


def _packet(sequence: int, size: int) -> bytes:
    head = struct.pack("!BBHII", 0x80, VP8.payload_type, sequence & 0xFFFF, sequence * 3000, SSRC)
    return head + bytes(size - len(head))


async def run(packets: int, size: int) -> tuple[float, float, int]:
    """(us of CPU per packet received without a tap, what the tap adds, packets the other
    relay took in)."""
    source, destination = MediaRelay(), MediaRelay()
    await source.start("127.0.0.1", "")
    await destination.start("127.0.0.1", "")
    info = models.TrackInfo(sid="TR_bench", type=models.TrackType.VIDEO, mime_type=VP8.mime)
    copy = RemoteCopy(
        SESSION, models.ParticipantInfo(identity="p"), destination, source.address, _Quiet(), 5.0
    )
    copy.add_track(TrackOffer(0, info, VP8))
    destination.sessions[SESSION] = copy
    receiver = TrackReceiver(VP8, SSRC, lambda _: None)
    track = PublishedTrack(info=info, receiver=receiver)
    data = [_packet(n, size) for n in range(packets)]

    started = time.process_time()
    for packet in data:
        receiver.on_packet(packet, 1.0)
    plain = time.process_time() - started

    taps = TrackTaps()
    taps.targets[SESSION] = TapTarget(source, destination.address, SESSION, 0)
    for layer in track.receivers():
        layer.relay = taps
    copied = copy.published["TR_bench"].receiver
    assert copied is not None
    sending = 0.0
    for start in range(0, packets, 200):
        # In bursts the receiving socket's buffer holds: sent, then drained by the loop.
        mark = time.process_time()
        for n in range(start, min(start + 200, packets)):
            receiver.on_packet(_packet(n + packets, size), 1.0)
        sending += time.process_time() - mark
        await asyncio.sleep(0.01)
    # The event loop reads one datagram per turn: let it drain what the bursts left.
    waited = 0
    while copied.stats.received < packets and waited < 200:
        await asyncio.sleep(0.01)
        waited += 1
    source.close()
    destination.close()
    local = plain / packets * 1e6
    return local, sending / packets * 1e6 - local, copied.stats.received


async def receive_cost(packets: int, size: int) -> tuple[float, int]:
    """us of CPU per datagram at the receiving end: ``datagram_received`` onwards, timed
    around direct calls (the socket read itself is the event loop's)."""
    relay = MediaRelay()
    info = models.TrackInfo(sid="TR_bench", type=models.TrackType.VIDEO, mime_type=VP8.mime)
    copy = RemoteCopy(
        SESSION, models.ParticipantInfo(identity="p"), relay, ("127.0.0.1", 9), _Quiet(), 5.0
    )
    copy.add_track(TrackOffer(0, info, VP8))
    relay.sessions[SESSION] = copy
    prefix = header(MEDIA, SESSION, 0, 0)
    data = [prefix + _packet(n, size) for n in range(packets)]
    started = time.process_time()
    for datagram in data:
        relay.datagram_received(datagram, ("127.0.0.1", 9))
    spent = time.process_time() - started
    copied = copy.published["TR_bench"].receiver
    assert copied is not None
    return spent / packets * 1e6, copied.stats.received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=20000)
    args = parser.parse_args()
    columns = ("size", "local us", "tap us", "relayed", "recv us", "pkts/cpu-s")
    print(" ".join(f"{c:>10}" for c in columns))
    for size in (100, 1200):
        local, tap, delivered = asyncio.run(run(args.packets, size))
        receive, _ = asyncio.run(receive_cost(args.packets, size))
        per_second = 1e6 / (tap + receive)
        figures = (size, f"{local:.2f}", f"{tap:.2f}", delivered, f"{receive:.2f}", int(per_second))
        print(" ".join(f"{f:>10}" for f in figures))


if __name__ == "__main__":
    main()
