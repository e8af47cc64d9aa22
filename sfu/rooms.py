"""The rooms hosted on this node (LiveKit ``service/roommanager.go``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from livekit.protocol import models

from protocol.ids import ROOM_PREFIX, new_id
from sfu.events import EventBus, EventKind, RoomEvent
from sfu.room import Room, RoomSettings

logger = logging.getLogger(__name__)

#: How often idle rooms are looked for (LiveKit runs CloseIdleRooms every second) and RTCP
#: feedback is sent to publishers.
IDLE_CHECK_INTERVAL_S = 1.0


class RoomNotFoundError(Exception):
    """The room does not exist and may not be created by this request."""


class RoomManager:
    """Creates rooms on demand, closes idle ones, and closes them all at shutdown.

    :param settings: defaults for rooms created by a join (``room.*`` config).
    :param auto_create: whether a join may create a room (``room.auto_create``).
    :param events: where room, participant and track events go (webhooks, metrics).
    """

    def __init__(
        self, settings: RoomSettings, *, auto_create: bool, events: EventBus | None = None
    ) -> None:
        self.settings = settings
        self.auto_create = auto_create
        self.events = events or EventBus()
        self.rooms: dict[str, Room] = {}
        self._idle_task: asyncio.Task[None] | None = None
        self._speaker_task: asyncio.Task[None] | None = None

    def get(self, name: str) -> Room | None:
        return self.rooms.get(name)

    def get_or_create(
        self,
        name: str,
        *,
        may_create: bool,
        configure: Callable[[Room], None] | None = None,
    ) -> Room:
        """The room called ``name``; created when ``room.auto_create`` or ``may_create`` allow.

        :param may_create: the joiner's token has ``roomCreate`` (LiveKit lets it create the
            room even with auto_create off).
        :param configure: applied to a room made here before it starts (a token's room
            configuration).
        """
        room = self.rooms.get(name)
        if room is not None:
            return room
        if not (self.auto_create or may_create):
            raise RoomNotFoundError(f"room {name} does not exist")
        return self.create(name, self.settings, configure=configure)

    def create(
        self,
        name: str,
        settings: RoomSettings,
        metadata: str = "",
        configure: Callable[[Room], None] | None = None,
    ) -> Room:
        """A new room called ``name`` (which must not exist yet); ``configure`` sets it up
        (its agent dispatches among other things) before anyone hears it started."""
        room = Room(
            name=name,
            sid=new_id(ROOM_PREFIX),
            settings=settings,
            now=time.monotonic(),
            events=self.events,
        )
        room.metadata = metadata
        if configure is not None:
            configure(room)
        self.rooms[name] = room
        room.log.info("room created")
        self.events.emit(RoomEvent(EventKind.ROOM_STARTED, room.to_proto()))
        return room

    async def close_room(
        self, room: Room, reason: models.DisconnectReason, *, reconnect: bool = False
    ) -> None:
        """Close ``room``; with ``reconnect`` its participants are asked to rejoin at once
        (a draining node handing its rooms to the rest of the cluster)."""
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        if room.closed:
            return
        await room.close(reason, reconnect=reconnect)
        self.events.emit(RoomEvent(EventKind.ROOM_FINISHED, room.to_proto()))

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle_task = loop.create_task(self._close_idle_rooms(), name="close-idle-rooms")
        self._speaker_task = loop.create_task(self._update_speakers(), name="speaker-updates")

    async def stop(self) -> None:
        for task in (self._idle_task, self._speaker_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for room in list(self.rooms.values()):
            await self.close_room(room, models.DisconnectReason.SERVER_SHUTDOWN)

    async def _update_speakers(self) -> None:
        """Every ``audio.update_interval``: each room's SpeakersChanged (``sfu/speakers.py``)."""
        interval = self.settings.audio.update_interval / 1000
        while True:
            await asyncio.sleep(interval)
            for room in list(self.rooms.values()):
                room.update_speakers()

    async def _close_idle_rooms(self) -> None:
        while True:
            await asyncio.sleep(IDLE_CHECK_INTERVAL_S)
            now = time.monotonic()
            for room in list(self.rooms.values()):
                room.tick(now)
            for room in [r for r in self.rooms.values() if r.idle_expired(now)]:
                room.log.info("closing idle room")
                await self.close_room(room, models.DisconnectReason.ROOM_CLOSED)
