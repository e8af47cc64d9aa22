"""The embedded broker's data: keys with expiry holding strings or hashes, WATCHes, and who is
subscribed to which channels and patterns. Synchronous and sans-IO; ``routing.embedded_commands``
runs commands against it and ``routing.embedded`` puts it on a socket.
"""

from __future__ import annotations

import functools
import heapq
import re
import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeAlias, TypeVar

from routing.resp import CommandError

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"

#: A key holds a string or a hash.
Value: TypeAlias = bytes | dict[bytes, bytes]


@functools.lru_cache(maxsize=1024)
def compile_glob(pattern: bytes) -> re.Pattern[bytes]:
    """Redis' glob (KEYS, SCAN MATCH, PSUBSCRIBE): ``*``, ``?``, ``[a-z]``, ``[^x]``, ``\\x``."""
    out = bytearray()
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == ord("*"):
            out += b".*"
        elif char == ord("?"):
            out += b"."
        elif char == ord("\\") and i + 1 < len(pattern):
            i += 1
            out += b"\\x%02x" % pattern[i]
        elif char == ord("["):
            i = _glob_class(pattern, i, out)
        else:
            out += b"\\x%02x" % char
        i += 1
    return re.compile(bytes(out), re.DOTALL)


def _glob_class(pattern: bytes, start: int, out: bytearray) -> int:
    """Translate the ``[...]`` at ``start``; return the index of its ``]``."""
    i = start + 1
    negate = pattern[i : i + 1] == b"^"
    i += negate
    items = bytearray()
    while i < len(pattern) and pattern[i] != ord("]"):
        if pattern[i] == ord("\\") and i + 1 < len(pattern):
            i += 1
        low = pattern[i]
        if pattern[i + 1 : i + 2] == b"-" and i + 2 < len(pattern) and pattern[i + 2] != ord("]"):
            low, high = sorted((low, pattern[i + 2]))
            items += b"\\x%02x-\\x%02x" % (low, high)
            i += 2
        else:
            items += b"\\x%02x" % low
        i += 1
    if i >= len(pattern):  # no closing bracket: a literal '['
        out += b"\\["
        return start
    if items:
        out += b"[" + (b"^" if negate else b"") + items + b"]"
    else:
        out += b"." if negate else b"(?!)"
    return i


def glob_match(pattern: bytes, subject: bytes) -> bool:
    return compile_glob(pattern).fullmatch(subject) is not None


class Watch:
    """One client's WATCHed keys; ``dirty`` once any of them was written or expired."""

    __slots__ = ("dirty", "keys")

    def __init__(self) -> None:
        self.keys: set[bytes] = set()
        self.dirty = False


class Keyspace:
    """Database 0: keys to strings or hashes, with per-key deadlines.

    Expired keys vanish lazily when looked at and in :meth:`sweep`, which the broker calls a few
    times a second. Deadlines are integer milliseconds on ``clock`` (monotonic by default).
    Every write goes through :meth:`touch` so WATCH sees it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._data: dict[bytes, Value] = {}
        self._deadlines: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []
        self._watchers: dict[bytes, set[Watch]] = {}

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def expiring(self) -> int:
        return len(self._deadlines)

    def get(self, key: bytes) -> Value | None:
        deadline = self._deadlines.get(key)
        if deadline is not None and deadline <= self.now_ms():
            self._remove(key)
            return None
        return self._data.get(key)

    def get_string(self, key: bytes) -> bytes | None:
        value = self.get(key)
        if isinstance(value, dict):
            raise CommandError(WRONGTYPE)
        return value

    def get_hash(self, key: bytes) -> dict[bytes, bytes] | None:
        value = self.get(key)
        if isinstance(value, bytes):
            raise CommandError(WRONGTYPE)
        return value

    def hash_for_write(self, key: bytes) -> dict[bytes, bytes]:
        """The hash at ``key``, created empty if missing; the caller is about to change it."""
        value = self.get_hash(key)
        if value is None:
            value = self._data[key] = {}
        self.touch(key)
        return value

    def set(self, key: bytes, value: Value, *, keep_ttl: bool = False) -> None:
        if not keep_ttl:
            self._deadlines.pop(key, None)
        self._data[key] = value
        self.touch(key)

    def delete(self, key: bytes) -> bool:
        if self.get(key) is None:
            return False
        self._remove(key)
        return True

    def deadline(self, key: bytes) -> int | None:
        """When an existing key expires, in ``now_ms()`` time; None if it does not."""
        return self._deadlines.get(key)

    def set_deadline(self, key: bytes, deadline: int | None) -> None:
        """Expire an existing key at ``deadline`` (``now_ms()`` time), or never if None."""
        if deadline is None:
            self._deadlines.pop(key, None)
        else:
            self._deadlines[key] = deadline
            heapq.heappush(self._heap, (deadline, key))
            if len(self._heap) > 2 * len(self._deadlines) + 64:  # renewed deadlines pile up
                self._heap = [(when, name) for name, when in self._deadlines.items()]
                heapq.heapify(self._heap)
        self.touch(key)

    def keys(self, pattern: bytes | None = None) -> list[bytes]:
        """Live keys matching the glob ``pattern`` (all if None), oldest first."""
        now = self.now_ms()
        expired = [key for key, when in self._deadlines.items() if when <= now]
        for key in expired:
            self._remove(key)
        if pattern is None or pattern == b"*":
            return list(self._data)
        regex = compile_glob(pattern)
        return [key for key in self._data if regex.fullmatch(key)]

    def sweep(self) -> int:
        """Remove the keys whose deadline passed; return how many."""
        now = self.now_ms()
        removed = 0
        while self._heap and self._heap[0][0] <= now:
            when, key = heapq.heappop(self._heap)
            if self._deadlines.get(key) == when:
                self._remove(key)
                removed += 1
        return removed

    def flush(self) -> None:
        for key in list(self._watchers):
            if key in self._data:
                self.touch(key)
        self._data.clear()
        self._deadlines.clear()
        self._heap.clear()

    def touch(self, key: bytes) -> None:
        """The key was written: fail the transactions WATCHing it."""
        for watch in self._watchers.get(key, ()):
            watch.dirty = True

    def watch(self, key: bytes, watch: Watch) -> None:
        self.get(key)  # a key that already expired is not a change to come
        self._watchers.setdefault(key, set()).add(watch)
        watch.keys.add(key)

    def check_watch(self, watch: Watch) -> bool:
        """True when no WATCHed key changed (expiring counts as a change)."""
        for key in watch.keys:
            self.get(key)
        return not watch.dirty

    def unwatch(self, watch: Watch) -> None:
        for key in watch.keys:
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.discard(watch)
                if not watchers:
                    del self._watchers[key]
        watch.keys.clear()
        watch.dirty = False

    def _remove(self, key: bytes) -> None:
        del self._data[key]
        self._deadlines.pop(key, None)
        self.touch(key)


S = TypeVar("S")


class Channels(Generic[S]):
    """Who is subscribed to which channel and pattern. Subscribers are kept in subscription
    order; a PUBLISH looks at its channel's subscribers and runs only the patterns."""

    def __init__(self) -> None:
        self._channels: dict[bytes, dict[S, None]] = {}
        self._patterns: dict[bytes, tuple[re.Pattern[bytes], dict[S, None]]] = {}

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @property
    def pattern_count(self) -> int:
        return len(self._patterns)

    def subscribe(self, subscriber: S, channel: bytes) -> None:
        self._channels.setdefault(channel, {})[subscriber] = None

    def unsubscribe(self, subscriber: S, channel: bytes) -> None:
        subscribers = self._channels.get(channel)
        if subscribers is not None:
            subscribers.pop(subscriber, None)
            if not subscribers:
                del self._channels[channel]

    def psubscribe(self, subscriber: S, pattern: bytes) -> None:
        entry = self._patterns.get(pattern)
        if entry is None:
            entry = self._patterns[pattern] = (compile_glob(pattern), {})
        entry[1][subscriber] = None

    def punsubscribe(self, subscriber: S, pattern: bytes) -> None:
        entry = self._patterns.get(pattern)
        if entry is not None:
            entry[1].pop(subscriber, None)
            if not entry[1]:
                del self._patterns[pattern]

    def receivers(self, channel: bytes) -> tuple[list[S], list[tuple[bytes, list[S]]]]:
        """Subscribers of ``channel``, then each matching pattern with its subscribers.

        Both are copies: delivering a message may disconnect a subscriber."""
        direct = list(self._channels.get(channel, ()))
        matched = [
            (pattern, list(subscribers))
            for pattern, (regex, subscribers) in self._patterns.items()
            if regex.fullmatch(channel)
        ]
        return direct, matched

    def names(self, pattern: bytes | None = None) -> Iterable[bytes]:
        """Channels with at least one subscriber, optionally matching a glob."""
        if pattern is None:
            return list(self._channels)
        regex = compile_glob(pattern)
        return [name for name in self._channels if regex.fullmatch(name)]
