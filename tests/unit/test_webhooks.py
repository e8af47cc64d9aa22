"""Webhook policy without a network or event loop: queue order, retries, drops, signing."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging

import jwt
import pytest
from livekit import api
from livekit.protocol import models, webhook

from config import CliOverrides, ConfigError, load_config
from sfu.events import EventKind, RoomEvent
from signaling.webhooks import (
    Attempt,
    Delivery,
    DeliveryQueues,
    EventFilter,
    QueuePolicy,
    WebhookNotifier,
    attempt_from_status,
    encode_event,
    signed_headers,
)

KEY = "hookkey"
SECRET = "a-webhook-secret-that-is-at-least-32-characters"
URL = "http://receiver.example/hook"
ROOM_A = (URL, "a")
ROOM_B = (URL, "b")
OK = Attempt(ok=True)
DOWN = Attempt(ok=False, detail="HTTP 503")


def _delivery(name: str, at: float = 0.0) -> Delivery:
    return Delivery(event=name, event_id=f"EV_{name}", body=b"{}", queued_at=at)


def _queues(**policy: float) -> DeliveryQueues:
    return DeliveryQueues(QueuePolicy(**policy))  # type: ignore[arg-type]


def _deliver_all(queues: DeliveryQueues, key: tuple[str, str], now: float) -> list[str]:
    sent = []
    while isinstance(step := queues.next(key, now), Delivery):
        sent.append(step.event)
        queues.done(key, step, OK, now)
    return sent


# --- order and independence ------------------------------------------------------------------


def test_events_of_a_room_go_out_in_order_and_the_empty_queue_is_forgotten() -> None:
    queues = _queues()
    for name in ("room_started", "participant_joined", "track_published"):
        assert queues.push(ROOM_A, _delivery(name))
    assert _deliver_all(queues, ROOM_A, now=1.0) == [
        "room_started",
        "participant_joined",
        "track_published",
    ]
    assert queues.next(ROOM_A, now=1.0) is None  # the worker ends
    assert len(queues) == 0
    assert queues.counts == {
        ("room_started", "success"): 1,
        ("participant_joined", "success"): 1,
        ("track_published", "success"): 1,
    }


def test_a_retrying_head_holds_back_its_room_only() -> None:
    queues = _queues()
    queues.push(ROOM_A, _delivery("a1"))
    queues.push(ROOM_A, _delivery("a2"))
    queues.push(ROOM_B, _delivery("b1"))
    head = queues.next(ROOM_A, now=0.0)
    assert isinstance(head, Delivery) and head.event == "a1"
    queues.done(ROOM_A, head, DOWN, now=0.0)
    # Room a waits for its retry; a2 is not sent before a1. Room b goes ahead.
    assert queues.next(ROOM_A, now=0.5) == pytest.approx(0.5)
    assert _deliver_all(queues, ROOM_B, now=0.5) == ["b1"]
    assert queues.next(ROOM_A, now=1.0) is head
    queues.done(ROOM_A, head, OK, now=1.0)
    assert _deliver_all(queues, ROOM_A, now=1.0) == ["a2"]
    assert queues.counts["a1", "failure"] == 1
    assert queues.counts["a1", "success"] == 1


def test_the_same_room_at_two_urls_has_two_queues() -> None:
    queues = _queues()
    other = ("http://other.example/hook", "a")
    queues.push(ROOM_A, _delivery("e"))
    queues.push(other, _delivery("e"))
    stuck = queues.next(ROOM_A, now=0.0)
    assert isinstance(stuck, Delivery)
    queues.done(ROOM_A, stuck, DOWN, now=0.0)
    assert _deliver_all(queues, other, now=0.0) == ["e"]


# --- retries ---------------------------------------------------------------------------------


def test_backoff_doubles_from_one_second_up_to_thirty() -> None:
    policy = QueuePolicy()
    assert [policy.backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert policy.backoff(1, retry_after_s=3) == 3
    assert policy.backoff(1, retry_after_s=3600) == 30  # a receiver cannot park the queue


def test_four_retries_on_the_backoff_schedule_then_the_event_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queues = _queues()
    queues.push(ROOM_A, _delivery("room_started"))
    queues.push(ROOM_A, _delivery("participant_joined"))
    now, waits = 0.0, []
    for _ in range(5):
        step = queues.next(ROOM_A, now)
        assert isinstance(step, Delivery) and step.event == "room_started"
        queues.done(ROOM_A, step, DOWN, now)
        wait = queues.next(ROOM_A, now)
        if not isinstance(wait, float):
            break
        waits.append(wait)
        now += wait
    assert waits == [1, 2, 4, 8]
    assert queues.counts["room_started", "failure"] == 5
    assert queues.counts["room_started", "dropped"] == 1
    assert "dropped webhook room_started EV_room_started for room a" in caplog.text
    # The next event of the room is not held back for good.
    assert _deliver_all(queues, ROOM_A, now) == ["participant_joined"]


def test_retry_after_from_the_receiver_sets_the_wait() -> None:
    queues = _queues()
    queues.push(ROOM_A, _delivery("e"))
    step = queues.next(ROOM_A, now=0.0)
    assert isinstance(step, Delivery)
    queues.done(ROOM_A, step, attempt_from_status(429, "5"), now=0.0)
    assert queues.next(ROOM_A, now=0.0) == 5


def test_a_refused_event_is_not_retried() -> None:
    queues = _queues()
    queues.push(ROOM_A, _delivery("refused"))
    queues.push(ROOM_A, _delivery("next"))
    step = queues.next(ROOM_A, now=0.0)
    assert isinstance(step, Delivery)
    queues.done(ROOM_A, step, attempt_from_status(404), now=0.0)
    assert queues.counts["refused", "failure"] == 1
    assert _deliver_all(queues, ROOM_A, now=0.0) == ["next"]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, "sent"), (204, "sent"), (500, "retried"), (502, "retried"), (503, "retried"),
     (429, "retried"), (501, "refused"), (400, "refused"), (401, "refused"), (404, "refused")],
)  # fmt: skip
def test_statuses_are_classified_as_go_retryablehttp_does(status: int, outcome: str) -> None:
    attempt = attempt_from_status(status)
    assert ("sent" if attempt.ok else "retried" if attempt.retryable else "refused") == outcome


def test_retry_after_is_read_only_as_seconds_on_429_and_503() -> None:
    assert attempt_from_status(503, "7").retry_after_s == 7
    assert attempt_from_status(500, "7").retry_after_s is None
    assert attempt_from_status(503, "Wed, 21 Oct 2015 07:28:00 GMT").retry_after_s is None


# --- drops -----------------------------------------------------------------------------------


def test_an_event_older_than_30_s_when_taken_up_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queues = _queues()
    queues.push(ROOM_A, _delivery("stale", at=0.0))
    queues.push(ROOM_A, _delivery("fresh", at=5.0))
    assert isinstance(queues.next(ROOM_A, now=30.0), Delivery)  # 30 s is not yet too old
    with caplog.at_level(logging.WARNING):
        assert _deliver_all(queues, ROOM_A, now=30.5) == ["fresh"]
    assert queues.counts["stale", "dropped"] == 1
    assert "dropped webhook stale EV_stale for room a" in caplog.text
    assert "too old" in caplog.text


def test_a_retrying_head_is_not_dropped_for_age_but_stale_followers_are() -> None:
    # LiveKit checks the age when an event is taken up; its retries then run their course.
    queues = _queues()
    queues.push(ROOM_A, _delivery("head", at=0.0))
    queues.push(ROOM_A, _delivery("behind", at=0.0))
    head = queues.next(ROOM_A, now=25.0)
    assert isinstance(head, Delivery)
    queues.done(ROOM_A, head, DOWN, now=25.0)
    assert queues.next(ROOM_A, now=40.0) is head
    queues.done(ROOM_A, head, OK, now=40.0)
    assert queues.next(ROOM_A, now=40.0) is None
    assert queues.counts["head", "success"] == 1
    assert queues.counts["behind", "dropped"] == 1


def test_a_room_queue_holds_200_events_and_drops_more(caplog: pytest.LogCaptureFixture) -> None:
    queues = _queues()
    assert all(queues.push(ROOM_A, _delivery(f"e{i}")) for i in range(200))
    with caplog.at_level(logging.WARNING):
        assert not queues.push(ROOM_A, _delivery("overflow"))
    assert "dropped webhook overflow EV_overflow for room a" in caplog.text
    assert "queue full" in caplog.text
    assert queues.counts["overflow", "dropped"] == 1
    assert queues.push(ROOM_B, _delivery("other room"))  # rooms have their own limit
    assert _deliver_all(queues, ROOM_A, now=0.0) == [f"e{i}" for i in range(200)]
    assert queues.push(ROOM_A, _delivery("later"))  # room again once delivered


def test_limits_come_from_the_policy() -> None:
    queues = _queues(max_depth=2, max_age_s=1.0)
    assert queues.push(ROOM_A, _delivery("1")) and queues.push(ROOM_A, _delivery("2"))
    assert not queues.push(ROOM_A, _delivery("3"))
    assert _deliver_all(queues, ROOM_A, now=1.5) == []
    assert queues.counts == {("1", "dropped"): 1, ("2", "dropped"): 1, ("3", "dropped"): 1}


def test_abandon_counts_what_was_left_as_dropped() -> None:
    queues = _queues()
    queues.push(ROOM_A, _delivery("room_finished"))
    queues.push(ROOM_B, _delivery("room_finished"))
    assert queues.abandon() == 2
    assert queues.counts["room_finished", "dropped"] == 2
    assert queues.next(ROOM_A, now=0.0) is None


# --- wire format -----------------------------------------------------------------------------


def _joined_event() -> RoomEvent:
    return RoomEvent(
        EventKind.TRACK_PUBLISHED,
        models.Room(sid="RM_abc", name="a", num_participants=1, creation_time=1700000000),
        models.ParticipantInfo(sid="PA_abc", identity="alice", state=models.ParticipantInfo.ACTIVE),
        models.TrackInfo(sid="TR_abc", type=models.TrackType.AUDIO, source=models.MICROPHONE),
    )


def test_the_body_is_protojson_with_camel_case_names_and_no_defaults() -> None:
    body = encode_event(_joined_event(), event_id="EV_abc", created_at=1700000001)
    decoded = json.loads(body)
    assert decoded["event"] == "track_published"
    assert decoded["id"] == "EV_abc"
    assert decoded["createdAt"] == "1700000001"  # int64 as a string, camelCase
    assert decoded["room"] == {
        "sid": "RM_abc",
        "name": "a",
        "numParticipants": 1,
        "creationTime": "1700000000",
    }
    assert decoded["participant"] == {"sid": "PA_abc", "identity": "alice", "state": "ACTIVE"}
    # AUDIO is TrackType's zero value, so it is left out as protojson does.
    assert decoded["track"] == {"sid": "TR_abc", "source": "MICROPHONE"}
    assert "numDropped" not in decoded and "egressInfo" not in decoded


def test_room_events_carry_no_participant_or_track() -> None:
    event = RoomEvent(EventKind.ROOM_STARTED, models.Room(sid="RM_abc", name="a"))
    decoded = json.loads(encode_event(event, event_id="EV_x", created_at=1))
    assert set(decoded) == {"event", "room", "id", "createdAt"}


def test_signed_headers_verify_with_livekit_api_webhook_receiver() -> None:
    body = encode_event(_joined_event(), event_id="EV_abc", created_at=1700000001)
    headers = signed_headers(body, KEY, SECRET)
    assert headers["Content-Type"] == "application/webhook+json"
    assert headers["User-Agent"] == "LiveKit"
    assert not headers["Authorization"].startswith("Bearer ")
    receiver = api.WebhookReceiver(api.TokenVerifier(KEY, SECRET))
    event = receiver.receive(body.decode(), headers["Authorization"])
    source = _joined_event()
    assert event == webhook.WebhookEvent(
        event="track_published",
        id="EV_abc",
        created_at=1700000001,
        room=source.room,
        participant=source.participant,
        track=source.track,
    )


def test_the_token_carries_the_body_hash_and_lives_five_minutes() -> None:
    body = b'{"event": "room_started"}'
    token = signed_headers(body, KEY, SECRET, now=1_800_000_000)["Authorization"]
    times = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options=times)  # type: ignore[arg-type]
    assert claims["iss"] == KEY
    assert claims["exp"] - claims["nbf"] == 300
    assert claims["sha256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()


def test_receiver_refuses_a_changed_body_or_another_secret() -> None:
    body = encode_event(_joined_event(), event_id="EV_abc", created_at=1)
    token = signed_headers(body, KEY, SECRET)["Authorization"]
    with pytest.raises(Exception, match="hash mismatch"):
        api.WebhookReceiver(api.TokenVerifier(KEY, SECRET)).receive(body.decode() + " ", token)
    other = api.WebhookReceiver(api.TokenVerifier(KEY, "another-secret-of-at-least-32-chars!"))
    with pytest.raises(jwt.InvalidSignatureError):
        other.receive(body.decode(), token)


def test_filter_includes_take_precedence_over_excludes() -> None:
    only_rooms = EventFilter(
        include=frozenset({"room_started"}), exclude=frozenset({"room_started", "track_published"})
    )
    assert only_rooms.allows("room_started")
    assert not only_rooms.allows("track_published")
    assert only_rooms.allows("participant_joined")  # includes alone restrict nothing (LiveKit)


# --- configuration ---------------------------------------------------------------------------

CONFIG_KEYS = f"keys:\n  {KEY}: {SECRET}\n"


def _config_error(body: str) -> str:
    with pytest.raises(ConfigError) as error:
        load_config(CliOverrides(config_body=CONFIG_KEYS + body), {})
    return str(error.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"webhook:\n  urls: [{URL}]\n", "webhook.urls are set but webhook.api_key is empty"),
        (f"webhook:\n  api_key: nope\n  urls: [{URL}]\n", '"nope" is not one of keys'),
        (f"webhook:\n  api_key: {KEY}\n  urls: [receiver.example]\n",
         'webhook.urls[0]: expected an http(s) URL, got "receiver.example"'),
        (f"webhook:\n  api_key: {KEY}\n  urls: ['http://h:99999/']\n", "webhook.urls[0]"),
        ("webhook:\n  resource_url_notifier:\n    max_age: 30\n",
         'webhook.resource_url_notifier.max_age: expected a duration such as "30s", got "30"'),
        ("webhook:\n  resource_url_notifier:\n    max_depth: -1\n", "must not be negative"),
    ],
)  # fmt: skip
def test_webhook_config_errors_are_clear(body: str, message: str) -> None:
    assert message in _config_error(body)


def test_notifier_settings_come_from_the_config() -> None:
    body = (
        f"webhook:\n  api_key: {KEY}\n  urls: [{URL}]\n"
        "  resource_url_notifier:\n    max_age: 1m30s\n    max_depth: 5\n"
        "  filter_params:\n    exclude_events: [track_published]\n"
    )
    loaded = load_config(CliOverrides(config_body=CONFIG_KEYS + body), {})
    assert loaded.warnings == ()  # implemented keys warn nothing
    notifier = WebhookNotifier.from_config(loaded.config)
    assert notifier.urls == (URL,)
    assert notifier._queues.policy == QueuePolicy(max_age_s=90.0, max_depth=5)
    assert not notifier._filter.allows("track_published")
    assert notifier._secret == SECRET


def test_zero_limits_mean_livekits_defaults() -> None:
    body = "webhook:\n  resource_url_notifier:\n    max_age: 0s\n    max_depth: 0\n"
    config = load_config(CliOverrides(config_body=CONFIG_KEYS + body), {}).config
    policy = WebhookNotifier.from_config(config)._queues.policy
    assert (policy.max_age_s, policy.max_depth) == (30.0, 200)
    assert dataclasses.replace(policy) == QueuePolicy()
