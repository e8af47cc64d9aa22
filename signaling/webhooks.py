"""Webhooks: room, participant and track events POSTed to ``webhook.urls`` as LiveKit does.

Delivery follows LiveKit's ``protocol/webhook/resource_url_notifier.go`` and
``resource_queue.go``: each URL keeps one ordered queue per room (LiveKit's ``EventKey`` is the
room name), so a slow or failing receiver holds back only that room's later events at that URL.
A failed POST is retried like go-retryablehttp's defaults (4 retries, backoff 1 s doubling to at
most 30 s); an event is dropped when it waited more than ``max_age`` (30 s) before its first
attempt, or when its queue already holds ``max_depth`` (200) events.

:class:`DeliveryQueues` holds that policy without any I/O (it is told the time and what a POST
returned); :class:`WebhookNotifier` is the room observer and the aiohttp sender around it. The
observer only encodes and enqueues, and a worker task exists only while its queue has events,
so signaling and media never wait on a receiver and idle rooms cost no task.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from google.protobuf import json_format
from livekit.protocol import webhook

from config import Config
from config.build import duration_seconds
from protocol.ids import EVENT_PREFIX, new_id
from protocol.token import VideoGrant, issue_token
from sfu.events import EventBus, RoomEvent

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/webhook+json"
USER_AGENT = "LiveKit"
#: The signing JWT's lifetime (LiveKit ``SetValidFor(5 * time.Minute)``).
TOKEN_TTL_S = 5 * 60
#: Per-request limit (connect to last byte). LiveKit's retryable client sets none; we bound it
#: so a receiver that never answers costs its room queue a timeout, then a retry. 10 s is the
#: timeout of LiveKit's original webhook notifier.
REQUEST_TIMEOUT_S = 10.0
#: At shutdown, in-flight and queued deliveries (room_finished of the closed rooms) get this
#: long before their workers are cancelled.
SHUTDOWN_GRACE_S = 2.0
DEFAULT_MAX_AGE_S = 30.0
DEFAULT_MAX_DEPTH = 200
#: The webhook token grants nothing: it only signs one body.
_NO_GRANT = VideoGrant(can_publish=False, can_subscribe=False, can_publish_data=False)

QueueKey = tuple[str, str]
"""(URL, room name): one ordered queue each."""


# --- policy (no I/O) -----------------------------------------------------------------------


@dataclass(frozen=True)
class QueuePolicy:
    """Limits and retry schedule; the defaults are LiveKit's."""

    max_age_s: float = DEFAULT_MAX_AGE_S
    max_depth: int = DEFAULT_MAX_DEPTH
    max_retries: int = 4
    backoff_min_s: float = 1.0
    backoff_max_s: float = 30.0

    def backoff(self, failures: int, retry_after_s: float | None = None) -> float:
        """Seconds before the retry that follows failure number ``failures`` (1-based).

        go-retryablehttp ``DefaultBackoff``: min * 2**attempt capped at max, or the receiver's
        ``Retry-After`` on 429/503 (which we also cap, so no receiver can park a queue).
        """
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.backoff_max_s)
        return min(self.backoff_min_s * 2.0 ** max(failures - 1, 0), self.backoff_max_s)


@dataclass(eq=False)
class Delivery:
    """One event on its way to one URL."""

    event: str
    event_id: str
    body: bytes
    queued_at: float
    failures: int = 0
    not_before: float = 0.0
    """Monotonic time of the next attempt (after a failure)."""


@dataclass(frozen=True)
class Attempt:
    """What one POST came to."""

    ok: bool
    retryable: bool = True
    retry_after_s: float | None = None
    detail: str = ""


def attempt_from_status(status: int, retry_after: str | None = None) -> Attempt:
    """Classify a response as go-retryablehttp's ``DefaultRetryPolicy`` does: 2xx is success;
    429 and 5xx other than 501 are retried; anything else is refused for good. (LiveKit counts a
    refused event as sent; we count it as a failure, which it is for the operator.)"""
    if 200 <= status < 300:
        return Attempt(ok=True, detail=f"HTTP {status}")
    retryable = status == 429 or (status >= 500 and status != 501)
    wait: float | None = None
    if status in (429, 503) and retry_after is not None and retry_after.strip().isdigit():
        wait = float(retry_after)
    return Attempt(ok=False, retryable=retryable, retry_after_s=wait, detail=f"HTTP {status}")


class DeliveryQueues:
    """The ordered queues of every (URL, room) and what their worker must do next.

    ``counts`` counts by (event name, status): "success" per delivered event, "failure" per
    failed attempt, "dropped" per event given up (too old, queue full, retries exhausted,
    shutdown); exported as ``livekit_webhook_dispatch_total``.
    """

    def __init__(self, policy: QueuePolicy) -> None:
        self.policy = policy
        self.counts: Counter[tuple[str, str]] = Counter()
        self._queues: dict[QueueKey, deque[Delivery]] = {}

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def push(self, key: QueueKey, delivery: Delivery) -> bool:
        """Queue ``delivery``; False if it was dropped because its queue is full."""
        queue = self._queues.setdefault(key, deque())
        if len(queue) >= self.policy.max_depth:
            self._drop(key, delivery, "queue full")
            return False
        queue.append(delivery)
        return True

    def next(self, key: QueueKey, now: float) -> Delivery | float | None:
        """The delivery to attempt now, else seconds to wait for the head's retry, else None:
        the queue is empty and forgotten, so its worker ends."""
        queue = self._queues.get(key)
        while queue:
            head = queue[0]
            # resource_url_notifier.go Process: the age is checked when an event is taken up.
            if head.failures == 0 and now - head.queued_at > self.policy.max_age_s:
                queue.popleft()
                self._drop(key, head, "too old")
                continue
            if head.not_before > now:
                return head.not_before - now
            return head
        self._queues.pop(key, None)
        return None

    def done(self, key: QueueKey, delivery: Delivery, attempt: Attempt, now: float) -> None:
        """Record the outcome of attempting ``delivery`` (the head of ``key``'s queue)."""
        queue = self._queues.get(key)
        if not queue or queue[0] is not delivery:
            return  # abandoned meanwhile (shutdown)
        if attempt.ok:
            queue.popleft()
            self.counts[delivery.event, "success"] += 1
            logger.debug("sent webhook %s %s to %s", delivery.event, delivery.event_id, key[0])
            return
        self.counts[delivery.event, "failure"] += 1
        delivery.failures += 1
        if not attempt.retryable:
            queue.popleft()
            _warn("could not send", key, delivery, f"{attempt.detail}; not retried")
        elif delivery.failures > self.policy.max_retries:
            queue.popleft()
            self._drop(
                key, delivery, f"{delivery.failures} attempts failed, last: {attempt.detail}"
            )
        else:
            wait = self.policy.backoff(delivery.failures, attempt.retry_after_s)
            delivery.not_before = now + wait
            _warn("failed to send", key, delivery, f"{attempt.detail}; retrying in {wait:.1f} s")

    def abandon(self) -> int:
        """Drop everything still queued (shutdown); returns how many events that was."""
        queues, self._queues = self._queues, {}
        for key, queue in queues.items():
            for delivery in queue:
                self._drop(key, delivery, "server shutting down")
        return sum(len(queue) for queue in queues.values())

    def _drop(self, key: QueueKey, delivery: Delivery, reason: str) -> None:
        self.counts[delivery.event, "dropped"] += 1
        _warn("dropped", key, delivery, reason)


def _warn(what: str, key: QueueKey, delivery: Delivery, detail: str) -> None:
    # LiveKit logs the same fields: event, id, room, URL and why.
    fields = (what, delivery.event, delivery.event_id, key[1], key[0], detail)
    logger.warning("%s webhook %s %s for room %s to %s: %s", *fields)


# --- wire format ---------------------------------------------------------------------------


def encode_event(event: RoomEvent, *, event_id: str, created_at: int) -> bytes:
    """The body LiveKit sends: ``WebhookEvent`` as protojson (lowerCamelCase names, default
    values left out, int64 as strings)."""
    message = webhook.WebhookEvent(event=event.kind.value, id=event_id, created_at=created_at)
    message.room.CopyFrom(event.room)
    if event.participant is not None:
        message.participant.CopyFrom(event.participant)
    if event.track is not None:
        message.track.CopyFrom(event.track)
    return json_format.MessageToJson(message, indent=None).encode("utf-8")


def signed_headers(
    body: bytes, api_key: str, secret: str, now: float | None = None
) -> dict[str, str]:
    """Headers of one POST: the JWT carries base64(SHA-256(body)) and goes in Authorization
    without a "Bearer " prefix (``resource_url_notifier.go send``)."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
    token = issue_token(
        api_key=api_key,
        secret=secret,
        identity="",
        video=_NO_GRANT,
        ttl_s=TOKEN_TTL_S,
        sha256=digest,
        now=now,
    )
    return {"Authorization": token, "Content-Type": CONTENT_TYPE, "User-Agent": USER_AGENT}


@dataclass(frozen=True)
class EventFilter:
    """``webhook.filter_params`` (LiveKit ``filter.go``): included events always pass,
    otherwise everything not excluded does."""

    include: frozenset[str] = field(default_factory=frozenset)
    exclude: frozenset[str] = field(default_factory=frozenset)

    def allows(self, event: str) -> bool:
        return event in self.include or event not in self.exclude


# --- I/O -----------------------------------------------------------------------------------


class WebhookNotifier:
    """The room observer that delivers every event to every URL.

    :param urls: receivers; each has its own queues.
    :param api_key: signs the requests, with ``secret``.
    :param clock: monotonic seconds, for queue ages and backoff.
    """

    def __init__(
        self,
        urls: Iterable[str],
        api_key: str,
        secret: str,
        *,
        policy: QueuePolicy | None = None,
        event_filter: EventFilter | None = None,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.urls = tuple(urls)
        self._api_key = api_key
        self._secret = secret
        self._queues = DeliveryQueues(policy or QueuePolicy())
        self.counts = self._queues.counts
        self._filter = event_filter or EventFilter()
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._clock = clock
        self._workers: dict[QueueKey, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._accepting = False

    @classmethod
    def from_config(cls, config: Config) -> WebhookNotifier:
        hook = config.webhook
        limits = hook.resource_url_notifier
        # As LiveKit, a zero max_age or max_depth means the default.
        policy = QueuePolicy(
            max_age_s=duration_seconds(limits.max_age) or DEFAULT_MAX_AGE_S,
            max_depth=limits.max_depth or DEFAULT_MAX_DEPTH,
        )
        event_filter = EventFilter(
            frozenset(hook.filter_params.include_events),
            frozenset(hook.filter_params.exclude_events),
        )
        secret = config.keys.get(hook.api_key, "")
        return cls(hook.urls, hook.api_key, secret, policy=policy, event_filter=event_filter)

    @property
    def active_workers(self) -> int:
        """Worker tasks alive: one per (URL, room) with events queued."""
        return len(self._workers)

    @property
    def queued(self) -> int:
        return len(self._queues)

    def on_room_event(self, event: RoomEvent) -> None:
        if not self._accepting or not self._filter.allows(event.kind.value):
            return
        event_id = new_id(EVENT_PREFIX)
        body = encode_event(event, event_id=event_id, created_at=int(time.time()))
        now = self._clock()
        for url in self.urls:
            key = (url, event.room.name)
            delivery = Delivery(event.kind.value, event_id, body, now)
            if self._queues.push(key, delivery) and key not in self._workers:
                self._workers[key] = asyncio.get_running_loop().create_task(
                    self._work(key), name=f"webhook {event.room.name}"
                )

    async def start(self) -> None:
        # One session, no connection cap: a receiver holding connections open must not starve
        # another URL or room of connections (Go's pooled transport has no cap either).
        connector = aiohttp.TCPConnector(limit=0)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        self._accepting = True

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Let deliveries finish for up to ``grace_s``, then cancel the rest and close."""
        self._accepting = False
        workers = list(self._workers.values())
        if workers:
            _done, pending = await asyncio.wait(workers, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        left = self._queues.abandon()
        if left:
            logger.warning("%d webhooks undelivered at shutdown", left)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _work(self, key: QueueKey) -> None:
        try:
            while (step := self._queues.next(key, self._clock())) is not None:
                if isinstance(step, float):
                    await asyncio.sleep(step)
                    continue
                attempt = await self._post(key[0], step)
                self._queues.done(key, step, attempt, self._clock())
        except Exception:
            # A bug must not kill delivery for good: the next event starts a new worker.
            logger.exception("webhook worker for room %s to %s failed", key[1], key[0])
        finally:
            # Synchronous with next() returning None: no event can be queued in between
            # without seeing this worker gone and starting another.
            if self._workers.get(key) is asyncio.current_task():
                del self._workers[key]

    async def _post(self, url: str, delivery: Delivery) -> Attempt:
        session = self._session
        if session is None:
            return Attempt(ok=False, detail="server shutting down")
        headers = signed_headers(delivery.body, self._api_key, self._secret)
        try:
            async with session.post(url, data=delivery.body, headers=headers) as response:
                return attempt_from_status(response.status, response.headers.get("Retry-After"))
        except (ValueError, aiohttp.ClientSSLError) as exc:
            # A bad URL (aiohttp's InvalidURL is a ValueError) or certificate: not retried by
            # go-retryablehttp either, the next attempt would fail the same way.
            return Attempt(ok=False, retryable=False, detail=f"{type(exc).__name__}: {exc}")
        except TimeoutError:
            return Attempt(ok=False, detail=f"no answer within {self._timeout.total} s")
        except (aiohttp.ClientError, OSError) as exc:
            return Attempt(ok=False, detail=f"{type(exc).__name__}: {exc}")


WEBHOOKS = web.AppKey("webhooks", WebhookNotifier)
"""The application's notifier (its ``counts`` feed the metrics)."""


def install_webhooks(app: web.Application, config: Config, events: EventBus) -> WebhookNotifier:
    """Create the notifier; with URLs configured, subscribe it and run it with ``app``.

    It stops at cleanup, after shutdown closed the rooms, so room_finished still goes out.
    """
    notifier = WebhookNotifier.from_config(config)
    app[WEBHOOKS] = notifier
    if not notifier.urls:
        return notifier
    events.subscribe(notifier)

    async def start(app: web.Application) -> None:
        await notifier.start()

    async def stop(app: web.Application) -> None:
        await notifier.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return notifier
