"""``--sink``: subscribers that stop taking media in once it flows, so that the load generator
costs almost nothing per packet the server forwards (for loading a server that shares the
machine, e.g. one worker per core).

Once every track a subscriber expects has delivered :data:`MIN_PACKETS`, a classic BPF
program (``SO_ATTACH_FILTER``, socket(7)) on its UDP socket makes the kernel drop RTP before
it is queued; STUN, DTLS and RTCP still arrive, and the subscriber goes on sending consent
checks, Receiver Reports and REMB, so the server keeps sending. The subscriber's counters stop
there: with ``--sink`` what was forwarded is the server's to count (its Prometheus
``livekit_packet_total``), and the load tester's packet and loss figures cover only the
packets before sinking.
"""

from __future__ import annotations

import ctypes
import socket
import struct

#: Packets each expected track must have delivered before its subscriber sinks.
MIN_PACKETS = 20
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
#: A UDP socket's filter sees the packet from the UDP header on; the payload starts after it.
_UDP_HEADER = 8
_LDB, _JGE, _RET = 0x30, 0x35, 0x06  # BPF_LD|BPF_B|BPF_ABS, BPF_JMP|BPF_JGE|BPF_K, BPF_RET|BPF_K
#: (code, jump if true, jump if false, k): drop when the first byte says RTP or RTCP (128-191,
#: RFC 7983) and the second is not an RTCP packet type (192-223, RFC 5761); keep the rest.
MEDIA_FILTER = (
    (_LDB, 0, 0, _UDP_HEADER),
    (_JGE, 0, 5, 128),  # below 128: STUN, DTLS -> keep
    (_JGE, 4, 0, 192),  # 192 and up: not RTP -> keep
    (_LDB, 0, 0, _UDP_HEADER + 1),
    (_JGE, 0, 1, 192),  # below 192: RTP -> drop
    (_JGE, 0, 1, 224),  # 192-223: RTCP -> keep, 224 and up: RTP with the marker -> drop
    (_RET, 0, 0, 0),
    (_RET, 0, 0, 0xFFFFFFFF),
)


def drop_rtp(sock: socket.socket) -> None:
    """From now on the kernel drops RTP arriving on ``sock`` (Linux)."""
    code = b"".join(struct.pack("HBBI", *instruction) for instruction in MEDIA_FILTER)
    program = ctypes.create_string_buffer(code)  # copied by the kernel in setsockopt
    fprog = struct.pack("HL", len(MEDIA_FILTER), ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def media_flowing(streams: dict[int, int], track_of_ssrc: dict[int, str], expected: int) -> bool:
    """Whether ``expected`` tracks have each delivered :data:`MIN_PACKETS`; ``streams`` is
    packets per received SSRC, ``track_of_ssrc`` the track SID each SSRC belongs to."""
    if expected <= 0:
        return False
    tracks = set()
    for ssrc, packets in streams.items():
        if packets >= MIN_PACKETS:
            tracks.add(track_of_ssrc.get(ssrc) or f"ssrc:{ssrc}")
    return len(tracks) >= expected
