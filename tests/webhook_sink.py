"""A local webhook receiver that checks every request as a LiveKit backend would: headers,
then ``livekit-api``'s ``WebhookReceiver`` (JWT signature and body hash)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from livekit import api
from livekit.protocol import webhook

WAIT_S = 15.0


class WebhookSink:
    """Serves POST /hook on 127.0.0.1.

    ``status`` is what it answers; ``hang`` picks events it never answers until
    :meth:`release` (or :meth:`stop`). ``accepted`` holds the events answered 2xx, ``received``
    every verified request, ``errors`` every request that failed a check.
    """

    def __init__(self, key: str, secret: str) -> None:
        self._receiver = api.WebhookReceiver(api.TokenVerifier(key, secret))
        self.status = 200
        self.hang: Callable[[webhook.WebhookEvent], bool] = lambda _event: False
        self.hanging = 0
        """Requests started and held by ``hang``."""
        self.accepted: list[webhook.WebhookEvent] = []
        self.received: list[webhook.WebhookEvent] = []
        self.errors: list[str] = []
        self.port = 0
        self._released = asyncio.Event()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def release(self) -> None:
        """Answer the held requests, and hold no more."""
        self.hang = lambda _event: False
        self._released.set()

    def names(self, room: str) -> list[str]:
        """Event names accepted for ``room`` in arrival order, each event id once (a retry
        of an event whose answer the server missed may arrive twice)."""
        seen: set[str] = set()
        names = []
        for event in self.accepted:
            if event.room.name == room and event.id not in seen:
                seen.add(event.id)
                names.append(event.event)
        return names

    async def wait_until(self, condition: Callable[[], bool], within_s: float = WAIT_S) -> None:
        async def scan() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(scan(), within_s)

    async def wait_for_names(self, room: str, names: list[str], within_s: float = WAIT_S) -> None:
        """Until ``room``'s accepted events start with ``names``; fails on any other order."""
        try:
            await self.wait_until(lambda: len(self.names(room)) >= len(names), within_s)
        except TimeoutError:
            raise AssertionError(f"{room}: waited for {names}, got {self.names(room)}") from None
        assert self.names(room)[: len(names)] == names, self.names(room)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        event = self._verify(request, body)
        if event is None:
            return web.Response(status=401)
        self.received.append(event)
        self._notify()
        if self.hang(event):
            self.hanging += 1
            await self._released.wait()
        if not 200 <= self.status < 300:
            return web.Response(status=self.status)
        self.accepted.append(event)
        self._notify()
        return web.Response(status=200)

    def _verify(self, request: web.Request, body: str) -> webhook.WebhookEvent | None:
        auth = request.headers.get("Authorization", "")
        problems = [
            f"{name}: {request.headers.get(name)!r}"
            for name, expected in (
                ("Content-Type", "application/webhook+json"),
                ("User-Agent", "LiveKit"),
            )
            if request.headers.get(name) != expected
        ]
        if auth.startswith("Bearer "):
            problems.append("Authorization has a Bearer prefix")
        event: webhook.WebhookEvent | None = None
        try:
            event = self._receiver.receive(body, auth)
        except Exception as exc:
            problems.append(f"WebhookReceiver refused it: {exc!r}")
        if problems:
            self.errors.extend(problems)
            self._notify()
            return None
        return event

    def _notify(self) -> None:
        self._changed.set()
