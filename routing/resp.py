"""The Redis wire protocol (RESP2 and RESP3): a sans-IO command parser and a reply serializer.

The embedded broker (``routing.embedded``) reads commands with :class:`RespParser` and writes
replies with :func:`encode`, in the protocol version the client chose with ``HELLO`` (2 unless
it asked for 3). Commands are RESP arrays of bulk strings, as every client library sends them;
inline commands (``PING\\r\\n`` typed into telnet) are not supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

#: Largest bulk string accepted in a command (Redis allows 512 MB; we carry signalling).
MAX_BULK = 64 * 1024 * 1024
#: Most arguments accepted in one command (Redis' limit for unauthenticated clients).
MAX_ARGS = 1024 * 1024
#: Longest ``*<count>`` or ``$<length>`` header line, CRLF included.
MAX_HEADER = 32

_LENGTH = re.compile(rb"-?[0-9]+\Z")


class ProtocolError(ValueError):
    """The client sent something that is not RESP; the connection must be closed."""


class CommandError(Exception):
    """A command failed; ``str(error)`` is the reply's text, starting with its code (``ERR``)."""


@dataclass(frozen=True, slots=True)
class Status:
    """A simple string reply: ``+OK``."""

    text: str


@dataclass(frozen=True, slots=True)
class Error:
    """An error reply; ``text`` starts with the error code (``ERR``, ``WRONGTYPE``, ...)."""

    text: str


@dataclass(frozen=True, slots=True)
class Verbatim:
    """Text (INFO, CLIENT INFO): a verbatim string in RESP3, a bulk string in RESP2."""

    text: bytes


@dataclass(frozen=True, slots=True)
class Map:
    """A map in RESP3 (HGETALL, HELLO); a flat key, value, key, value array in RESP2."""

    items: list[tuple[Reply, Reply]]


@dataclass(frozen=True, slots=True)
class Push:
    """An out-of-band message (pub/sub): a push in RESP3, an array in RESP2."""

    items: list[Reply]


@dataclass(frozen=True, slots=True)
class Replies:
    """Several replies to one command: ``SUBSCRIBE a b`` answers once per channel."""

    items: list[Reply]


class NullArray:
    """The null array of RESP2 (``*-1``: EXEC after a WATCHed key changed); null in RESP3."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL_ARRAY"


NULL_ARRAY = NullArray()
OK = Status("OK")

#: A reply: ``None`` is the null bulk string, ``bytes`` a bulk string, ``int`` an integer and
#: ``list`` an array.
Reply: TypeAlias = (
    int
    | bytes
    | list["Reply"]
    | Status
    | Error
    | Verbatim
    | Map
    | Push
    | Replies
    | NullArray
    | None
)


def encode(reply: Reply, protocol: int = 2) -> bytes:
    """Serialize ``reply`` in RESP2 (``protocol=2``) or RESP3 (``protocol=3``)."""
    out: list[bytes] = []
    _write(reply, protocol == 3, out)
    return b"".join(out)


def _write(reply: Reply, resp3: bool, out: list[bytes]) -> None:
    if isinstance(reply, bytes):
        out += (b"$%d\r\n" % len(reply), reply, b"\r\n")
    elif isinstance(reply, int):
        out.append(b":%d\r\n" % reply)
    elif reply is None:
        out.append(b"_\r\n" if resp3 else b"$-1\r\n")
    elif isinstance(reply, list):
        _write_items(b"*", reply, resp3, out)
    elif isinstance(reply, Status):
        out.append(b"+" + _line(reply.text) + b"\r\n")
    elif isinstance(reply, Error):
        out.append(b"-" + _line(reply.text) + b"\r\n")
    elif isinstance(reply, Map):
        _write_map(reply, resp3, out)
    elif isinstance(reply, Push):
        _write_items(b">" if resp3 else b"*", reply.items, resp3, out)
    elif isinstance(reply, Replies):
        for item in reply.items:
            _write(item, resp3, out)
    elif isinstance(reply, Verbatim):
        if resp3:
            out += (b"=%d\r\ntxt:" % (len(reply.text) + 4), reply.text, b"\r\n")
        else:
            out += (b"$%d\r\n" % len(reply.text), reply.text, b"\r\n")
    else:
        out.append(b"_\r\n" if resp3 else b"*-1\r\n")


def _write_items(kind: bytes, items: list[Reply], resp3: bool, out: list[bytes]) -> None:
    out.append(kind + b"%d\r\n" % len(items))
    for item in items:
        _write(item, resp3, out)


def _write_map(reply: Map, resp3: bool, out: list[bytes]) -> None:
    if resp3:
        out.append(b"%%%d\r\n" % len(reply.items))
    else:
        out.append(b"*%d\r\n" % (2 * len(reply.items)))
    for key, value in reply.items:
        _write(key, resp3, out)
        _write(value, resp3, out)


def _line(text: str) -> bytes:
    """A simple string or error must not contain CR or LF: they would end the reply early."""
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")


class RespParser:
    """Splits a client's byte stream into commands (lists of arguments).

    Feed it whatever the socket returned; it keeps partial commands across calls and returns
    every command completed so far, so pipelined and fragmented input both work. Malformed
    input sets :attr:`error` (the reason, for an ``ERR Protocol error: ...`` reply); the
    commands before it are still returned, and nothing more is parsed afterwards.
    """

    def __init__(self, *, max_bulk: int = MAX_BULK, max_args: int = MAX_ARGS) -> None:
        self.max_bulk = max_bulk
        self.max_args = max_args
        self.error: str | None = None
        self._buf = bytearray()
        self._pos = 0
        self._args: list[bytes] = []
        self._missing = 0  # arguments of the current command not read yet; 0 between commands
        self._bulk = -1  # length of the bulk string being waited for; -1 while reading a header

    def feed(self, data: bytes) -> list[list[bytes]]:
        """Add received bytes; return the commands they completed, in order."""
        if self.error is not None:
            return []
        self._buf += data
        commands: list[list[bytes]] = []
        try:
            self._parse(commands)
        except ProtocolError as exc:
            self.error = str(exc)
            self._buf = bytearray()
            self._pos = 0
            self._args = []
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        return commands

    def _parse(self, commands: list[list[bytes]]) -> None:
        while True:
            if self._missing == 0:
                count = self._header(b"*", "multibulk")
                if count is None:
                    return
                if count <= 0:  # Redis ignores empty and negative multibulks
                    continue
                if count > self.max_args:
                    raise ProtocolError("invalid multibulk length")
                self._missing = count
            if not self._read_args():
                return
            commands.append(self._args)
            self._args = []

    def _read_args(self) -> bool:
        buf = self._buf
        while self._missing:
            if self._bulk < 0:
                size = self._header(b"$", "bulk")
                if size is None:
                    return False
                if not 0 <= size <= self.max_bulk:
                    raise ProtocolError("invalid bulk length")
                self._bulk = size
            end = self._pos + self._bulk
            if len(buf) < end + 2:
                return False
            if buf[end : end + 2] != b"\r\n":
                raise ProtocolError("expected CRLF after bulk string")
            self._args.append(bytes(buf[self._pos : end]))
            self._pos = end + 2
            self._bulk = -1
            self._missing -= 1
        return True

    def _header(self, kind: bytes, what: str) -> int | None:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            return None
        if buf[pos] != kind[0]:
            raise ProtocolError(f"expected '{kind.decode()}', got '{_show(buf[pos])}'")
        end = buf.find(b"\r\n", pos, pos + MAX_HEADER)
        if end < 0:
            if len(buf) - pos >= MAX_HEADER:
                raise ProtocolError(f"too big {what} count string")
            return None
        digits = bytes(buf[pos + 1 : end])
        if not _LENGTH.match(digits):
            raise ProtocolError(f"invalid {what} length")
        self._pos = end + 2
        return int(digits)


def _show(byte: int) -> str:
    return chr(byte) if 0x20 < byte < 0x7F else f"\\x{byte:02x}"
