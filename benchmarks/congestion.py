"""Congestion control's cost outside the packet path: reading one subscriber's transport-cc
feedback (the C ring lookup and 5 ms grouping), the send-side estimator and the allocation,
per packet the feedback covers.

A subscriber transport stamps video packets (1200 bytes) through the C fan-out; its feedback
is written as libwebrtc writes it (``sfu/twcc.py`` FeedbackWriter, every 100 ms) and fed to
``SubscriberBandwidth.on_rtcp`` with two video downtracks to share the estimate among. CPU
time is ``time.process_time``; the figures are CPU microseconds per covered packet, to set
beside the forwarding benchmark's microseconds per out packet.

    .venv/bin/python -m benchmarks.congestion [--seconds S]
"""

from __future__ import annotations

import argparse
import time

from livekit.protocol import models

from protocol.sdp_media import TWCC_URI, Codec, OutgoingTrack
from sfu.congestion import CongestionSettings, SubscriberBandwidth
from sfu.downtrack import TWCC_EXTENSION_ID, DownTrack
from sfu.fanout import Sink
from sfu.receiver import PublishedTrack, TrackReceiver
from sfu.twcc import FeedbackWriter

VP8 = Codec(96, "video/VP8", 90000)
SIZE = 1200


def _downtracks(sink: Sink) -> dict[str, DownTrack]:
    found = {}
    for index in range(2):
        receiver = TrackReceiver(VP8, 1000 + index, lambda _: None)
        receiver.bitrate = 500_000
        outgoing = OutgoingTrack(
            "video",
            str(index),
            (VP8,),
            ((TWCC_EXTENSION_ID, TWCC_URI),),
            "PA|TR",
            f"TR{index}",
            ssrc=2000 + index,
        )
        downtrack = DownTrack(outgoing, sink, lambda _: None, receiver)
        downtrack.published = PublishedTrack(models.TrackInfo(sid=f"TR{index}"), receiver)
        found[f"TR{index}"] = downtrack
    return found


def run(packets_per_second: int, seconds: float) -> tuple[float, int, int]:
    sink = Sink(lambda _: True)
    downtracks = _downtracks(sink)
    bandwidth = SubscriberBandwidth(sink, CongestionSettings(), lambda *_: None, "PA_bench")
    writer = FeedbackWriter()
    header = bytes((0x80, 96, 0, 0)) + bytes(8)
    payload = header + bytes(SIZE - 12)
    feedback: list[tuple[float, bytes]] = []
    now, interval, sent = 0.0, 1 / packets_per_second, 0
    next_feedback = 0.1
    tracks = list(downtracks.values())
    while now < seconds:
        downtrack = tracks[sent % 2]
        downtrack.forward(payload, 12, len(payload), sent & 0xFFFF, sent * 3000, 1000, now)
        writer.on_packet((sink.twcc_next - 1) & 0xFFFF, now + 0.02)
        sent += 1
        now += interval
        if now >= next_feedback:
            next_feedback += 0.1
            feedback += [(now, p) for p in writer.feedback(1, 2)]
    start = time.process_time()
    for at, rtcp_packet in feedback:
        bandwidth.on_rtcp(rtcp_packet, at, downtracks)
    cpu = time.process_time() - start
    return cpu, sent, len(feedback)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    columns = ("pkt/s", "packets", "feedback", "cpu s", "us/pkt", "us/feedback")
    print(" ".join(f"{name:>11}" for name in columns))
    for rate in (100, 400, 1600):
        cpu, packets, feedback = run(rate, args.seconds)
        row = (rate, packets, feedback, f"{cpu:.3f}", f"{cpu / packets * 1e6:.2f}")
        print(" ".join(f"{value:>11}" for value in row), f"{cpu / feedback * 1e6:>11.1f}")


if __name__ == "__main__":
    main()
