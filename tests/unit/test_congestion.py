"""One subscriber's congestion control (``sfu/congestion.py``) on real downtracks, fed RTCP as
a client sends it: which tracks are paused and resumed, and when the subscriber is told."""

from __future__ import annotations

from livekit.protocol import models

from protocol import rtcp
from protocol.sdp_media import Codec, OutgoingTrack
from sfu.congestion import CongestionSettings, SubscriberBandwidth, carries_estimate
from sfu.downtrack import DownTrack
from sfu.fanout import Sink
from sfu.receiver import PublishedTrack, TrackReceiver

VP8 = Codec(96, "video/VP8", 90000)


def _downtrack(sid: str, source: models.TrackSource, bitrate: int) -> DownTrack:
    receiver = TrackReceiver(VP8, hash(sid) & 0xFFFF, lambda _: None)
    receiver.bitrate = bitrate
    outgoing = OutgoingTrack("video", sid, (VP8,), (), f"PA_pub|{sid}", sid, ssrc=hash(sid) & 0xFF)
    downtrack = DownTrack(outgoing, Sink(lambda _: True), lambda _: None, receiver)
    downtrack.published = PublishedTrack(models.TrackInfo(sid=sid, source=source), receiver)
    return downtrack


def _setup(
    allow_pause: bool,
) -> tuple[SubscriberBandwidth, dict[str, DownTrack], list[tuple[str, bool]]]:
    told: list[tuple[str, bool]] = []
    downtracks = {
        "TR_screen": _downtrack("TR_screen", models.TrackSource.SCREEN_SHARE, 60_000),
        "TR_camera": _downtrack("TR_camera", models.TrackSource.CAMERA, 500_000),
    }
    bandwidth = SubscriberBandwidth(
        Sink(lambda _: True),
        CongestionSettings(allow_pause=allow_pause, probe=False),
        lambda downtrack, paused: told.append((downtrack.outgoing.track_id, paused)),
        "PA_sub",
    )
    return bandwidth, downtracks, told


def _remb(bps: int) -> bytes:
    return rtcp.remb(1, bps, [1])


def test_what_does_not_fit_is_paused_then_resumed_after_the_minimum_wait() -> None:
    bandwidth, downtracks, told = _setup(allow_pause=True)
    bandwidth.on_rtcp(_remb(200_000), 1.0, downtracks)
    assert told == [("TR_camera", True)], "the screen share fits first; the camera does not"
    assert downtracks["TR_camera"].paused and not downtracks["TR_camera"].enabled
    assert not downtracks["TR_screen"].paused
    bandwidth.on_rtcp(_remb(5_000_000), 2.0, downtracks)
    assert told == [("TR_camera", True)], "a paused track stays paused a while (no flapping)"
    bandwidth.on_rtcp(_remb(5_000_000), 7.0, downtracks)
    assert told[-1] == ("TR_camera", False)
    assert downtracks["TR_camera"].enabled and downtracks["TR_camera"].needs_keyframe
    assert bandwidth.pauses == 1


def test_without_pausing_every_track_keeps_its_lowest_layer() -> None:
    bandwidth, downtracks, told = _setup(allow_pause=False)
    bandwidth.on_rtcp(_remb(100_000), 1.0, downtracks)
    assert not told and all(d.enabled for d in downtracks.values())


def test_a_track_the_subscriber_disabled_is_not_reported_paused() -> None:
    bandwidth, downtracks, told = _setup(allow_pause=True)
    downtracks["TR_camera"].set_disabled(True)
    bandwidth.on_rtcp(_remb(100_000), 1.0, downtracks)
    assert not told


def test_only_feedback_that_estimates_wakes_the_estimator() -> None:
    report = rtcp.receiver_report(
        1,
        2,
        fraction_lost=0,
        cumulative_lost=0,
        highest_sequence=1,
        jitter=0,
        last_sr=0,
        delay_since_last_sr=0,
    )
    assert not carries_estimate(report)
    assert carries_estimate(report + _remb(300_000))
