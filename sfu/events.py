"""Room lifecycle events, as LiveKit's telemetry emits them, for webhooks and metrics.

The room layer reports what happened; consumers (the webhook notifier, the metrics registry)
subscribe at the composition root. Observers are called synchronously on the event loop and
must not block: they queue work of their own.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Protocol

from livekit.protocol import models

logger = logging.getLogger(__name__)


class EventKind(enum.StrEnum):
    """LiveKit's webhook event names (``protocol/webhook/consts.go``)."""

    ROOM_STARTED = "room_started"
    ROOM_FINISHED = "room_finished"
    PARTICIPANT_JOINED = "participant_joined"
    """Fired when the participant becomes ACTIVE (its primary peer connection is up)."""
    PARTICIPANT_LEFT = "participant_left"
    """Fired only for participants that were ACTIVE."""
    PARTICIPANT_CONNECTION_ABORTED = "participant_connection_aborted"
    """A participant that left without ever becoming ACTIVE (LiveKit PR #1234)."""
    TRACK_PUBLISHED = "track_published"
    TRACK_UNPUBLISHED = "track_unpublished"


@dataclass(frozen=True, slots=True)
class RoomEvent:
    """One event with snapshots of what it is about, taken when it happened."""

    kind: EventKind
    room: models.Room
    participant: models.ParticipantInfo | None = None
    track: models.TrackInfo | None = None


class RoomObserver(Protocol):
    def on_room_event(self, event: RoomEvent) -> None: ...


class EventBus:
    """Fans events out to observers; one failing observer never affects the room or the others."""

    def __init__(self) -> None:
        self._observers: list[RoomObserver] = []

    def subscribe(self, observer: RoomObserver) -> None:
        self._observers.append(observer)

    def emit(self, event: RoomEvent) -> None:
        for observer in self._observers:
            try:
                observer.on_room_event(event)
            except Exception:
                logger.exception("room event observer failed on %s", event.kind)
