"""The webhook notifier's I/O against a local receiver, with short backoffs and timeouts:
retries reach a receiver that comes back, a hanging receiver holds up only its room, workers
end when their queue is empty, and stopping leaks no task."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import pytest
from livekit.protocol import models

from sfu.events import EventKind, RoomEvent
from signaling.webhooks import EventFilter, QueuePolicy, WebhookNotifier
from tests.webhook_sink import WebhookSink

KEY = "hookkey"
SECRET = "a-webhook-secret-that-is-at-least-32-characters"
FAST = QueuePolicy(backoff_min_s=0.05, backoff_max_s=0.2)
LIFECYCLE = [
    EventKind.ROOM_STARTED,
    EventKind.PARTICIPANT_JOINED,
    EventKind.TRACK_PUBLISHED,
    EventKind.TRACK_UNPUBLISHED,
    EventKind.PARTICIPANT_LEFT,
    EventKind.ROOM_FINISHED,
]


def _event(kind: EventKind, room: str) -> RoomEvent:
    participant = None
    if kind not in (EventKind.ROOM_STARTED, EventKind.ROOM_FINISHED):
        participant = models.ParticipantInfo(sid="PA_alice", identity="alice")
    return RoomEvent(kind, models.Room(sid=f"RM_{room}", name=room), participant)


@pytest.fixture
async def sink() -> AsyncIterator[WebhookSink]:
    receiver = WebhookSink(KEY, SECRET)
    await receiver.start()
    yield receiver
    await receiver.stop()
    assert receiver.errors == []


async def _started(*urls: str, **kwargs: object) -> WebhookNotifier:
    kwargs.setdefault("policy", FAST)
    notifier = WebhookNotifier(urls, KEY, SECRET, **kwargs)  # type: ignore[arg-type]
    await notifier.start()
    return notifier


async def _idle(notifier: WebhookNotifier) -> None:
    async def poll() -> None:
        while notifier.active_workers:  # noqa: ASYNC110 - no event marks a worker's end
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), 5)


def _webhook_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("webhook ")]


async def test_a_room_lifecycle_arrives_in_order_and_no_worker_outlives_it(
    sink: WebhookSink,
) -> None:
    notifier = await _started(sink.url)
    try:
        for kind in LIFECYCLE:
            notifier.on_room_event(_event(kind, "a"))
        assert notifier.active_workers == 1  # one per (URL, room), not per event
        await sink.wait_for_names("a", [kind.value for kind in LIFECYCLE])
        await _idle(notifier)
        assert _webhook_tasks() == []
        assert notifier.counts == {(kind.value, "success"): 1 for kind in LIFECYCLE}
        assert len({event.id for event in sink.accepted}) == len(LIFECYCLE)
        assert all(event.id.startswith("EV_") for event in sink.accepted)
    finally:
        await notifier.stop()


async def test_events_wait_for_a_receiver_answering_503_and_then_arrive(
    sink: WebhookSink,
) -> None:
    sink.status = 503
    notifier = await _started(sink.url)
    try:
        notifier.on_room_event(_event(EventKind.ROOM_STARTED, "a"))
        notifier.on_room_event(_event(EventKind.PARTICIPANT_JOINED, "a"))
        await sink.wait_until(lambda: len(sink.received) >= 2)
        # Only the head was tried: the second event waits behind it.
        assert {event.event for event in sink.received} == {"room_started"}
        sink.status = 200
        await sink.wait_for_names("a", ["room_started", "participant_joined"])
        assert notifier.counts["room_started", "failure"] >= 2
        assert notifier.counts["room_started", "success"] == 1
    finally:
        await notifier.stop()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_receiver_not_listening_yet_gets_the_queued_events_when_it_starts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = _closed_port()
    late = WebhookSink(KEY, SECRET)
    notifier = await _started(f"http://127.0.0.1:{port}/hook")
    try:
        with caplog.at_level(logging.WARNING):
            notifier.on_room_event(_event(EventKind.ROOM_STARTED, "a"))
            notifier.on_room_event(_event(EventKind.PARTICIPANT_JOINED, "a"))

            async def refused() -> None:
                while notifier.counts["room_started", "failure"] < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(refused(), 5)
        assert "failed to send webhook room_started" in caplog.text
        await late.start(port)
        await late.wait_for_names("a", ["room_started", "participant_joined"])
        assert late.errors == []
    finally:
        await notifier.stop()
        await late.stop()


async def test_a_hanging_room_holds_up_only_itself_and_times_out(sink: WebhookSink) -> None:
    other = WebhookSink(KEY, SECRET)
    await other.start()
    sink.hang = lambda event: event.room.name == "stuck"
    notifier = await _started(sink.url, other.url, request_timeout_s=0.5)
    try:
        notifier.on_room_event(_event(EventKind.ROOM_STARTED, "stuck"))
        notifier.on_room_event(_event(EventKind.PARTICIPANT_JOINED, "stuck"))
        await sink.wait_until(lambda: sink.hanging == 1)
        notifier.on_room_event(_event(EventKind.ROOM_STARTED, "free"))
        # Another room at the same URL, and the same room at another URL, go through.
        await sink.wait_for_names("free", ["room_started"])
        await other.wait_for_names("stuck", ["room_started", "participant_joined"])
        # The hanging head holds back the rest of its room at that URL.
        assert [e.event for e in sink.received if e.room.name == "stuck"] == ["room_started"]
        assert sink.names("stuck") == []
        # The request times out and is retried; once the receiver answers, the room catches up.
        await sink.wait_until(lambda: notifier.counts["room_started", "failure"] >= 1)
        sink.release()
        await sink.wait_for_names("stuck", ["room_started", "participant_joined"])
    finally:
        await notifier.stop()
        await other.stop()


async def test_stop_gives_a_short_grace_then_cancels_and_leaks_nothing(
    sink: WebhookSink, caplog: pytest.LogCaptureFixture
) -> None:
    sink.hang = lambda event: True
    notifier = await _started(sink.url, request_timeout_s=30)
    notifier.on_room_event(_event(EventKind.ROOM_FINISHED, "a"))
    await sink.wait_until(lambda: sink.hanging == 1)
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(notifier.stop(grace_s=0.2), 5)
    assert notifier.active_workers == 0
    assert _webhook_tasks() == []
    assert notifier.counts["room_finished", "dropped"] == 1
    assert "1 webhooks undelivered at shutdown" in caplog.text
    # Events after stop are ignored rather than starting new workers.
    notifier.on_room_event(_event(EventKind.ROOM_STARTED, "b"))
    assert notifier.active_workers == 0 and notifier.queued == 0


async def test_stop_lets_queued_events_finish_within_the_grace(sink: WebhookSink) -> None:
    notifier = await _started(sink.url)
    for kind in LIFECYCLE:
        notifier.on_room_event(_event(kind, "a"))
    await notifier.stop()
    assert sink.names("a") == [kind.value for kind in LIFECYCLE]


async def test_excluded_events_are_not_sent(sink: WebhookSink) -> None:
    only_rooms = EventFilter(exclude=frozenset({"participant_joined"}))
    notifier = await _started(sink.url, event_filter=only_rooms)
    try:
        for kind in (EventKind.ROOM_STARTED, EventKind.PARTICIPANT_JOINED, EventKind.ROOM_FINISHED):
            notifier.on_room_event(_event(kind, "a"))
        await sink.wait_for_names("a", ["room_started", "room_finished"])
        assert all(event.event != "participant_joined" for event in sink.received)
    finally:
        await notifier.stop()


async def test_an_unusable_url_fails_once_without_retries_or_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The config refuses such URLs; the sender must cope with one anyway.
    notifier = await _started("http://127.0.0.1:99999/hook")
    try:
        with caplog.at_level(logging.WARNING):
            notifier.on_room_event(_event(EventKind.ROOM_STARTED, "a"))
            await _idle(notifier)
        assert notifier.counts == {("room_started", "failure"): 1}
        assert "could not send webhook room_started" in caplog.text
        assert "InvalidUrlClientError" in caplog.text and "not retried" in caplog.text
        assert "Traceback" not in caplog.text
    finally:
        await notifier.stop()
