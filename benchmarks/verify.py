"""SRTP verification of received packets: pylibsrtp's public ``unprotect`` against the
server's ``SrtpVerifier`` (libsrtp called on the session's preallocated buffer).

    taskset -c 1 .venv/bin/python -m benchmarks.verify [--packets N]

Prints us of CPU per verified packet and packets per CPU-second, for each way and size, twice
alternating (this machine's noise is large between runs, smaller within one).
"""

from __future__ import annotations

import argparse
import os
import struct
import time
from collections.abc import Callable

from pylibsrtp import Policy, Session

from sfu.srtp import SrtpVerifier


def _protected(key: bytes, size: int, count: int) -> list[bytes]:
    sender = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    return [
        sender.protect(struct.pack("!BBHII", 0x80, 111, i & 0xFFFF, i * 960, 42) + bytes(size - 12))
        for i in range(count)
    ]


def _cpu_per_packet(verify: Callable[[bytes], object], packets: list[bytes]) -> float:
    start = time.process_time()
    for packet in packets:
        verify(packet)
    return (time.process_time() - start) / len(packets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=60000)
    args = parser.parse_args()
    key = os.urandom(30)
    print(f"{'size':>6} {'way':>10} {'us/packet':>10} {'packets/cpu-s':>14}")
    for size in (100, 1200):
        packets = _protected(key, size, args.packets)
        for way in ("public", "verifier") * 2:
            receiver = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
            verify = receiver.unprotect if way == "public" else SrtpVerifier(receiver).unprotect
            seconds = _cpu_per_packet(verify, packets)
            print(f"{size:>6} {way:>10} {seconds * 1e6:>10.2f} {1 / seconds:>14,.0f}")


if __name__ == "__main__":
    main()
