"""What a server on the open Internet needs against connections that cost without doing
anything: a cap on concurrent connections per source address, and counts of what was cut off
(``livekit_connection_dropped_total``). Used by the HTTP listener (``signaling/http_guard.py``)
and ICE-TCP (``sfu/ice.py``)."""

from __future__ import annotations

import logging
import time
from collections import Counter

logger = logging.getLogger(__name__)

#: Seconds a new HTTP connection has to send its first request's headers, and a new ICE-TCP
#: connection its first STUN binding request (slowloris and idle sockets hold descriptors).
FIRST_REQUEST_TIMEOUT_S = 10.0
#: Seconds an ICE-TCP connection may stay silent (clients send consent checks every few
#: seconds, RFC 7675).
ICE_TCP_IDLE_TIMEOUT_S = 30.0

#: At most one log line per this many seconds about one kind of flood (:class:`Throttle`).
LOG_INTERVAL_S = 10.0

DROPPED: Counter[str] = Counter()
"""Connections cut off, by reason (``per_source_limit``, ``first_request_timeout``...)."""


class Throttle:
    """At most one log line per interval about something that can come in floods: ``due``
    counts each occurrence and says how many there were since the last line, when one is due.

    :param interval_s: seconds between two lines.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._logged_at = -interval_s
        self._unlogged = 0

    def due(self, now: float) -> int:
        """Occurrences to report now (this one included), or 0 when the line must wait."""
        self._unlogged += 1
        if now - self._logged_at < self.interval_s:
            return 0
        count, self._unlogged, self._logged_at = self._unlogged, 0, now
        return count


class SourceLimiter:
    """Counts open connections per source address; refuses one over ``cap`` (0 = no cap)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: Counter[str] = Counter()
        self._throttle = Throttle(LOG_INTERVAL_S)

    def admit(self, host: str) -> bool:
        if self.cap and self._open[host] >= self.cap:
            DROPPED["per_source_limit"] += 1
            refused = self._throttle.due(time.monotonic())
            if refused:
                logger.warning(
                    "refusing connections from %s: %d already open (%d refused)",
                    host,
                    self.cap,
                    refused,
                )
            return False
        self._open[host] += 1
        return True

    def release(self, host: str) -> None:
        self._open[host] -= 1
        if self._open[host] <= 0:
            del self._open[host]

    def open_from(self, host: str) -> int:
        return self._open[host]
