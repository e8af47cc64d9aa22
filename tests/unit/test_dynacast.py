"""Dynacast without a network: up at once, down after LiveKit's delay, the update's form
(sfu/dynacast.py), and what subscribers of a simulcast track make the publisher hear."""

from __future__ import annotations

from livekit.protocol import models, rtc

from sfu.dynacast import PAUSE_DELAY_S, Dynacast, quality_update
from tests.unit.test_simulcast import LOW, Meeting


def test_up_at_once_down_after_the_delay() -> None:
    dynacast = Dynacast(top_layer=2)
    assert dynacast.update(2, 0.0) is None, "the client starts with every layer on"
    assert dynacast.update(0, 1.0) is None
    assert dynacast.update(0, 1.0 + PAUSE_DELAY_S - 0.1) is None
    assert dynacast.update(0, 1.0 + PAUSE_DELAY_S) == 0
    assert dynacast.update(2, 7.0) == 2, "up: at once"
    assert dynacast.update(-1, 8.0) is None
    assert dynacast.update(1, 9.0) is None, "a different lower wish restarts the delay"
    assert dynacast.update(1, 9.0 + PAUSE_DELAY_S) == 1
    assert dynacast.update(2, 20.0) == 2
    assert dynacast.update(-1, 21.0) is None
    assert dynacast.update(2, 22.0) is None, "back before the delay: nothing to say"
    assert dynacast.update(2, 40.0) is None


def test_update_enables_qualities_by_rid_in_both_forms() -> None:
    update = quality_update("TR_x", "video/VP8", {0: "q", 1: "h", 2: "f"}, 1)
    enabled = {q.quality: q.enabled for q in update.subscribed_qualities}
    assert enabled == {
        models.VideoQuality.LOW: True,
        models.VideoQuality.MEDIUM: True,
        models.VideoQuality.HIGH: False,
    }
    assert [c.codec for c in update.subscribed_codecs] == ["vp8"], "livekit-client's name"
    assert list(update.subscribed_codecs[0].qualities) == list(update.subscribed_qualities)
    off = quality_update("TR_x", "video/H264", {0: "q"}, -1)
    assert not any(q.enabled for q in off.subscribed_qualities)


def test_publisher_hears_what_subscribers_want() -> None:
    meeting = Meeting()
    sent: list[rtc.SubscribedQualityUpdate] = []
    simulcast = meeting.track.simulcast
    assert simulcast is not None
    simulcast.dynacast.on_update = sent.append
    meeting.start_layers(0, 1, 2)
    meeting.subscribe("viewer")
    meeting.settings("viewer", quality=LOW)
    start = meeting.clock.now
    while meeting.clock.now < start + PAUSE_DELAY_S + 0.5:
        meeting.frame()
    assert len(sent) == 1
    assert [q.enabled for q in sent[0].subscribed_qualities] == [True, False, False]
    meeting.settings("viewer", quality=models.VideoQuality.HIGH)
    assert len(sent) == 2, "an upgrade goes at once"
    assert all(q.enabled for q in sent[1].subscribed_qualities)
    meeting.viewers["viewer"][0].unsubscribe(meeting.track.sid, "viewer", meeting.track)
    for _ in range(int(PAUSE_DELAY_S) + 2):  # the once-a-second tick, with no packets
        meeting.clock.now += 1
        meeting.tracks.tick(meeting.clock.now)
    assert not any(q.enabled for q in sent[-1].subscribed_qualities), "nobody watches"
