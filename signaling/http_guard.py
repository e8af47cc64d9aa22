"""Guards in front of aiohttp's request handler: a deadline for a new connection's first
request headers, and a cap on connections per source address (``sfu/guard.py``).

aiohttp has keep-alive and size limits but no deadline for headers, so 1,000 connections that
send nothing (or one header byte a minute) would hold the process's file descriptors for ever.
The guard sits between the event loop and aiohttp's protocol, forwarding everything: it is
installed through the runner's public ``server`` property, which ``TCPSite`` uses as its
protocol factory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

from sfu.guard import DROPPED, FIRST_REQUEST_TIMEOUT_S, SourceLimiter

logger = logging.getLogger(__name__)

_END_OF_HEADERS = b"\r\n\r\n"


class GuardedRunner(web.AppRunner):
    """An AppRunner whose sites accept connections through :class:`GuardedConnection`."""

    def __init__(self, app: web.Application, limiter: SourceLimiter, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limiter = limiter

    @property
    def server(self) -> Any:
        inner = super().server
        if inner is None:
            return None
        limiter = self._limiter
        return lambda: GuardedConnection(inner, limiter)


class GuardedConnection(asyncio.Protocol):
    """One accepted connection: refused over the per-source cap, closed when its first request
    headers are not complete within :data:`FIRST_REQUEST_TIMEOUT_S`; otherwise aiohttp's own
    protocol sees every event as if it had been installed directly."""

    def __init__(self, make_inner: Callable[[], Any], limiter: SourceLimiter) -> None:
        self._make_inner = make_inner
        self._limiter = limiter
        self._inner: Any = None
        self._host = ""
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if peer else ""
        if not self._limiter.admit(host):
            self._transport.abort()
            return
        self._host = host
        self._deadline = asyncio.get_running_loop().call_later(
            FIRST_REQUEST_TIMEOUT_S, self._too_slow
        )
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def _too_slow(self) -> None:
        self._deadline = None
        DROPPED["first_request_timeout"] += 1
        logger.debug(
            "closing %s: no complete request in %.0fs", self._host, FIRST_REQUEST_TIMEOUT_S
        )
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._deadline is not None:
            seen = self._tail + data
            if _END_OF_HEADERS in seen:
                self._deadline.cancel()
                self._deadline = None
                self._tail = b""
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is None:
            return None
        return cast(bool | None, self._inner.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._inner is None:
            return
        self._limiter.release(self._host)
        inner, self._inner = self._inner, None
        inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
