"""Webhooks from the real server, caused by real SDK participants, received on a local HTTP
server and verified with ``livekit-api``'s ``WebhookReceiver``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from livekit import rtc
from livekit.protocol import models

from tests.e2e.harness import API_KEY, API_SECRET, ServerProcess, free_port
from tests.e2e.sdk import joined, wait_until
from tests.webhook_sink import WebhookSink

pytestmark = pytest.mark.sdk

Start = Callable[..., ServerProcess]
LIFECYCLE = [
    "room_started",
    "participant_joined",
    "track_published",
    "track_unpublished",
    "participant_left",
    "room_finished",
]
#: Far below the SDK's 15 s connect timeout, far above a normal local join.
JOIN_BOUND_S = 5.0


def _config(*urls: str) -> str:
    # Short room timeouts so room_finished follows the last departure within a second or two.
    hooks = "".join(f"    - {url}\n" for url in urls)
    return (
        "room:\n  empty_timeout: 2\n  departure_timeout: 1\n"
        f"webhook:\n  api_key: {API_KEY}\n  urls:\n{hooks}"
    )


@pytest.fixture
async def sink() -> AsyncIterator[WebhookSink]:
    receiver = WebhookSink(API_KEY, API_SECRET)
    await receiver.start()
    yield receiver
    await receiver.stop()
    assert receiver.errors == [], "every webhook must pass WebhookReceiver"


async def _publish_and_unpublish(room: rtc.Room, sink: WebhookSink) -> str:
    source = rtc.AudioSource(48000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("mic", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    publication = await room.local_participant.publish_track(track, options)
    # The server publishes the track once the publisher's offer is answered; unpublishing
    # before that would withdraw a track that never was published (and so no events).
    await sink.wait_for_names(room.name, LIFECYCLE[:3])
    await room.local_participant.unpublish_track(publication.sid)
    return publication.sid


async def test_a_room_lifecycle_arrives_verified_and_in_order(
    start: Start, sink: WebhookSink
) -> None:
    began = time.time()
    server = start(_config(sink.url))
    async with joined(server, "alice", "wh-life") as alice:
        track_sid = await _publish_and_unpublish(alice, sink)
    await sink.wait_for_names("wh-life", LIFECYCLE)
    assert sink.names("wh-life") == LIFECYCLE
    events = {event.event: event for event in sink.accepted}
    assert len({event.room.sid for event in events.values()}) == 1
    assert events["room_started"].room.sid.startswith("RM_")
    for name in LIFECYCLE[1:5]:
        assert events[name].participant.identity == "alice", name
    assert events["participant_joined"].participant.state == models.ParticipantInfo.ACTIVE
    assert events["track_published"].track.sid == track_sid
    assert events["track_unpublished"].track.sid == track_sid
    assert not events["room_started"].HasField("participant")
    assert len({event.id for event in sink.accepted}) == len(sink.accepted)
    assert all(event.id.startswith("EV_") for event in sink.accepted)
    assert all(began - 1 <= event.created_at <= time.time() + 1 for event in sink.accepted)


async def test_a_participant_leaving_while_publishing_unpublishes_first(
    start: Start, sink: WebhookSink
) -> None:
    server = start(_config(sink.url))
    async with joined(server, "bob", "wh-leave") as bob:
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        await bob.local_participant.publish_track(track, rtc.TrackPublishOptions())
        await sink.wait_for_names("wh-leave", LIFECYCLE[:3])
    await sink.wait_for_names("wh-leave", LIFECYCLE)


async def test_a_receiver_answering_503_gets_the_queued_events_when_it_recovers(
    start: Start, sink: WebhookSink
) -> None:
    sink.status = 503
    server = start(_config(sink.url))
    async with joined(server, "carol", "wh-503"):
        # The first event is retried; nothing behind it is sent meanwhile.
        await sink.wait_until(lambda: len(sink.received) >= 2)
        assert {event.event for event in sink.received} == {"room_started"}
        assert len({event.id for event in sink.received}) == 1  # the same event, retried
        sink.status = 200
        await sink.wait_for_names("wh-503", LIFECYCLE[:2])
    await sink.wait_for_names("wh-503", [*LIFECYCLE[:2], "participant_left", "room_finished"])


async def test_a_receiver_not_listening_yet_gets_the_queued_events_when_it_starts(
    start: Start,
) -> None:
    port = free_port()
    late = WebhookSink(API_KEY, API_SECRET)
    server = start(_config(f"http://127.0.0.1:{port}/hook"))
    try:
        async with joined(server, "dave", "wh-late"):
            await wait_until(lambda: "failed to send webhook room_started" in server.logs())
            await late.start(port)
            await late.wait_for_names("wh-late", LIFECYCLE[:2])
        await late.wait_for_names("wh-late", [*LIFECYCLE[:2], "participant_left"])
        assert late.errors == []
    finally:
        await late.stop()


async def _timed_join(server: ServerProcess, identity: str, room: str) -> float:
    began = time.monotonic()
    async with joined(server, identity, room):
        return time.monotonic() - began


async def test_a_receiver_that_never_answers_does_not_slow_joins(
    start: Start, sink: WebhookSink
) -> None:
    healthy = WebhookSink(API_KEY, API_SECRET)
    await healthy.start()
    sink.hang = lambda event: event.room.name == "wh-stuck"
    server = start(_config(sink.url, healthy.url))
    try:
        async with joined(server, "erin", "wh-stuck"):
            await sink.wait_until(lambda: sink.hanging >= 1)
            # With room_started of this room hanging, more joins are as quick as ever.
            assert await _timed_join(server, "frank", "wh-stuck") < JOIN_BOUND_S
            assert await _timed_join(server, "grace", "wh-free") < JOIN_BOUND_S
            # Another room at the hanging URL, and this room at another URL, go through.
            await sink.wait_for_names("wh-free", ["room_started", "participant_joined"])
            await healthy.wait_for_names("wh-stuck", ["room_started", "participant_joined"])
            stuck = {event.event for event in sink.received if event.room.name == "wh-stuck"}
            assert stuck == {"room_started"}, "the hanging head holds back only its room"
            # Once the receiver answers again, the stuck room's events follow in order.
            sink.release()
            await sink.wait_for_names("wh-stuck", ["room_started", "participant_joined"], 30)
            caught_up = sink.names("wh-stuck")
            assert caught_up == healthy.names("wh-stuck")[: len(caught_up)]
    finally:
        await healthy.stop()
        assert healthy.errors == []


async def test_a_hanging_receiver_does_not_hold_up_shutdown(
    start: Start, sink: WebhookSink
) -> None:
    sink.hang = lambda event: True
    server = start(_config(sink.url))
    async with joined(server, "heidi", "wh-shutdown"):
        await sink.wait_until(lambda: sink.hanging >= 1)
    began = time.monotonic()
    # The harness kills the server after 15 s; exiting 0 means it stopped by itself first.
    assert await asyncio.to_thread(server.stop) == 0
    assert time.monotonic() - began < 10
    assert "webhooks undelivered at shutdown" in server.logs()
