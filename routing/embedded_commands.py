"""The embedded broker's command dispatcher: connections, transactions, pub/sub and EVAL, on
top of the key commands and known scripts in ``routing.embedded_keys``.

:class:`Broker` is synchronous and sans-IO: ``execute(client, args)`` returns the reply, and
messages for subscribers go to each :class:`Client`'s ``sink`` as encoded frames, in the order
PUBLISH ran. ``routing.embedded`` owns the sockets.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from routing.embedded_keys import (
    KEY_COMMANDS,
    KeyHandler,
    ScriptHandler,
    parse_int,
    script_handler,
    wrong_arguments,
)
from routing.embedded_store import Channels, Keyspace, Watch
from routing.resp import (
    NULL_ARRAY,
    OK,
    CommandError,
    Error,
    Map,
    Push,
    Replies,
    Reply,
    Status,
    Verbatim,
    encode,
)

logger = logging.getLogger(__name__)

#: The Redis version we answer to HELLO and INFO with (SET ... GET and EXPIRE NX need 7.0).
VERSION = "7.2.0"


@dataclass(eq=False)
class Client:
    """One connection's state. ``sink`` receives pub/sub frames (already encoded) for it."""

    id: int
    sink: Callable[[bytes], None]
    protocol: int = 2
    name: bytes | None = None
    lib_name: bytes = b""
    lib_ver: bytes = b""
    channels: dict[bytes, None] = field(default_factory=dict)
    patterns: dict[bytes, None] = field(default_factory=dict)
    queued: list[list[bytes]] | None = None  # commands since MULTI
    queue_failed: bool = False  # a command was refused since MULTI: EXEC aborts
    watch: Watch = field(default_factory=Watch)
    quitting: bool = False  # close once the reply is written
    closed: bool = False

    @property
    def subscriptions(self) -> int:
        return len(self.channels) + len(self.patterns)

    def deliver(self, frame: bytes) -> None:
        if not self.closed:
            self.sink(frame)


Handler = Callable[["Broker", Client, list[bytes]], Reply]


@dataclass(frozen=True, slots=True)
class Spec:
    handler: Handler
    arity: int  # exact if positive, at least -arity if negative
    pubsub: bool = False  # allowed while a RESP2 client is subscribed
    control: bool = False  # runs at once inside MULTI instead of being queued
    no_multi: bool = False  # refused inside MULTI


COMMANDS: dict[bytes, Spec] = {}


def command(name: str, arity: int, **flags: bool) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        COMMANDS[name.encode()] = Spec(handler, arity, **flags)
        return handler

    return register


def _on_keyspace(handler: KeyHandler) -> Handler:
    return lambda broker, client, args: handler(broker.keyspace, args)


for _name, (_handler, _arity) in KEY_COMMANDS.items():
    COMMANDS[_name] = Spec(_on_keyspace(_handler), _arity)


class Broker:
    """The shared state of every connection and the dispatcher of their commands."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.keyspace = Keyspace(clock)
        self.channels: Channels[Client] = Channels()
        self.clients: dict[int, Client] = {}
        self.scripts: dict[bytes, ScriptHandler] = {}  # SHA1 hex -> handler
        self.started = time.monotonic()
        self._ids = itertools.count(1)

    def connect(self, sink: Callable[[bytes], None]) -> Client:
        client = Client(next(self._ids), sink)
        self.clients[client.id] = client
        return client

    def disconnect(self, client: Client) -> None:
        client.closed = True
        for channel in client.channels:
            self.channels.unsubscribe(client, channel)
        for pattern in client.patterns:
            self.channels.punsubscribe(client, pattern)
        client.channels.clear()
        client.patterns.clear()
        self.keyspace.unwatch(client.watch)
        self.clients.pop(client.id, None)

    def execute(self, client: Client, args: list[bytes]) -> Reply:
        """Run (or, after MULTI, queue) one command; return its reply."""
        name = args[0].lower()
        spec = COMMANDS.get(name)
        refusal = self._refusal(client, spec, args)
        if refusal is not None:
            if client.queued is not None:
                client.queue_failed = True
            return refusal
        assert spec is not None
        if client.queued is not None and not spec.control:
            client.queued.append(args)
            return Status("QUEUED")
        return self.call(client, spec, args)

    def call(self, client: Client, spec: Spec, args: list[bytes]) -> Reply:
        try:
            return spec.handler(self, client, args)
        except CommandError as exc:
            return Error(str(exc))
        except Exception:  # a bug here must cost one reply, not the connection or the server
            logger.exception("embedded redis: %s failed", _text(args[0]))
            return Error("ERR internal error in the embedded broker")

    def publish(self, channel: bytes, message: bytes) -> int:
        """Send ``message`` to every subscriber of ``channel``; return how many got it."""
        direct, matched = self.channels.receivers(channel)
        frames: dict[int, bytes] = {}
        for client in direct:
            frame = frames.get(client.protocol)
            if frame is None:
                frame = frames[client.protocol] = encode(
                    Push([b"message", channel, message]), client.protocol
                )
            client.deliver(frame)
        receivers = len(direct)
        for pattern, clients in matched:
            frames.clear()
            for client in clients:
                frame = frames.get(client.protocol)
                if frame is None:
                    frame = frames[client.protocol] = encode(
                        Push([b"pmessage", pattern, channel, message]), client.protocol
                    )
                client.deliver(frame)
            receivers += len(clients)
        return receivers

    def _refusal(self, client: Client, spec: Spec | None, args: list[bytes]) -> Error | None:
        name = _text(args[0].lower())
        if spec is None:
            shown = ""
            for arg in args[1:]:
                if len(shown) >= 128:
                    break
                shown += f"'{_text(arg)[: 128 - len(shown)]}' "
            return Error(
                f"ERR unknown command '{_text(args[0])[:128]}', with args beginning with: {shown}"
            )
        if not (len(args) == spec.arity if spec.arity > 0 else len(args) >= -spec.arity):
            return Error(str(wrong_arguments(args[0].lower())))
        if client.protocol == 2 and client.subscriptions and not spec.pubsub:
            return Error(
                f"ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / "
                "QUIT / RESET are allowed in this context"
            )
        if client.queued is not None and spec.no_multi:
            return Error("ERR Command not allowed inside a transaction")
        return None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _subcommand(args: list[bytes], table: dict[bytes, tuple[Handler, int]]) -> Handler:
    sub = args[1].lower()
    entry = table.get(sub)
    if entry is None:
        command_name = _text(args[0]).upper()
        raise CommandError(f"ERR unknown subcommand '{_text(args[1])}'. Try {command_name} HELP.")
    handler, arity = entry
    if not (len(args) == arity if arity > 0 else len(args) >= -arity):
        raise wrong_arguments(args[0].lower() + b"|" + sub)
    return handler


# -- connection ------------------------------------------------------------------------------


@command("ping", -1, pubsub=True)
def _ping(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    if len(args) > 2:
        raise wrong_arguments(b"ping")
    if client.protocol == 2 and client.subscriptions:
        return [b"pong", args[1] if len(args) > 1 else b""]
    return args[1] if len(args) > 1 else Status("PONG")


@command("echo", 2)
def _echo(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    return args[1]


@command("quit", -1, pubsub=True, control=True)
def _quit(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    client.quitting = True
    return OK


@command("select", 2)
def _select(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    if parse_int(args[1]) != 0:
        raise CommandError("ERR DB index is out of range")
    return OK


def _check_auth(username: bytes) -> None:
    """The embedded broker has only Redis' default user, with no password (``nopass``)."""
    if username != b"default":
        raise CommandError("WRONGPASS invalid username-password pair or user is disabled.")


@command("auth", -2)
def _auth(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    if len(args) == 2:
        raise CommandError(
            "ERR AUTH <password> called without any password configured for the default user. "
            "Are you sure your configuration is correct?"
        )
    if len(args) > 3:
        raise CommandError("ERR syntax error")
    _check_auth(args[1])
    return OK


@command("hello", -1, no_multi=True)
def _hello(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    protocol = client.protocol
    if len(args) > 1:
        protocol = parse_int(args[1], "ERR Protocol version is not an integer or out of range")
        if protocol not in (2, 3):
            raise CommandError("NOPROTO unsupported protocol version")
    name: bytes | None = None
    words = args[2:]
    i = 0
    while i < len(words):
        option = words[i].upper()
        if option == b"AUTH" and i + 2 < len(words):
            _check_auth(words[i + 1])
            i += 3
        elif option == b"SETNAME" and i + 1 < len(words):
            name = _valid_name(words[i + 1])
            i += 2
        else:
            raise CommandError(f"ERR Syntax error in HELLO option '{_text(words[i])}'")
    client.protocol = protocol
    if name is not None:
        client.name = name or None
    return Map(
        [
            (b"server", b"redis"),
            (b"version", VERSION.encode()),
            (b"proto", protocol),
            (b"id", client.id),
            (b"mode", b"standalone"),
            (b"role", b"master"),
            (b"modules", []),
        ]
    )


def _valid_name(name: bytes) -> bytes:
    if any(not 0x21 <= byte <= 0x7E for byte in name):
        raise CommandError(
            "ERR Client names cannot contain spaces, newlines or special characters."
        )
    return name


def _client_line(client: Client) -> bytes:
    return (
        b"id=%d addr=unix fd=0 name=%s db=0 sub=%d psub=%d multi=%d resp=%d "
        b"lib-name=%s lib-ver=%s"
        % (
            client.id,
            client.name or b"",
            len(client.channels),
            len(client.patterns),
            -1 if client.queued is None else len(client.queued),
            client.protocol,
            client.lib_name,
            client.lib_ver,
        )
    )


def _client_setinfo(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    attribute = args[2].upper()
    if attribute not in (b"LIB-NAME", b"LIB-VER"):
        raise CommandError(f"ERR Unrecognized option '{_text(args[2])}'")
    if any(not 0x21 <= byte <= 0x7E for byte in args[3]):
        raise CommandError(
            f"ERR {_text(attribute).lower()} cannot contain spaces, newlines or special characters."
        )
    if attribute == b"LIB-NAME":
        client.lib_name = args[3]
    else:
        client.lib_ver = args[3]
    return OK


def _client_setname(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    client.name = _valid_name(args[2]) or None
    return OK


_CLIENT: dict[bytes, tuple[Handler, int]] = {
    b"id": (lambda broker, client, args: client.id, 2),
    b"getname": (lambda broker, client, args: client.name, 2),
    b"setname": (_client_setname, 3),
    b"setinfo": (_client_setinfo, 4),
    b"info": (lambda broker, client, args: Verbatim(_client_line(client) + b"\n"), 2),
    b"list": (
        lambda broker, client, args: Verbatim(
            b"".join(_client_line(other) + b"\n" for other in broker.clients.values())
        ),
        -2,
    ),
}


@command("client", -2)
def _client(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    return _subcommand(args, _CLIENT)(broker, client, args)


@command("info", -1)
def _info(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    keyspace = broker.keyspace
    sections = {
        b"server": [
            f"redis_version:{VERSION}",
            "redis_mode:standalone",
            "embedded:livekit-py-server",
            f"process_id:{os.getpid()}",
            f"uptime_in_seconds:{int(time.monotonic() - broker.started)}",
        ],
        b"clients": [
            f"connected_clients:{len(broker.clients)}",
            f"pubsub_clients:{sum(1 for c in broker.clients.values() if c.subscriptions)}",
        ],
        b"stats": [
            f"pubsub_channels:{broker.channels.channel_count}",
            f"pubsub_patterns:{broker.channels.pattern_count}",
        ],
        b"keyspace": [f"db0:keys={len(keyspace)},expires={keyspace.expiring},avg_ttl=0"]
        if len(keyspace)
        else [],
    }
    wanted = {arg.lower() for arg in args[1:]} or {b"default"}
    if wanted & {b"default", b"all", b"everything"}:
        wanted = set(sections)
    text = "\r\n".join(
        f"# {name.decode().capitalize()}\r\n" + "".join(line + "\r\n" for line in lines)
        for name, lines in sections.items()
        if name in wanted
    )
    return Verbatim(text.encode())


# -- transactions ----------------------------------------------------------------------------


@command("multi", 1, control=True)
def _multi(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    if client.queued is not None:
        raise CommandError("ERR MULTI calls can not be nested")
    client.queued = []
    client.queue_failed = False
    return OK


@command("exec", 1, control=True)
def _exec(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    if client.queued is None:
        raise CommandError("ERR EXEC without MULTI")
    queued, failed = client.queued, client.queue_failed
    client.queued = None
    client.queue_failed = False
    try:
        if failed:
            return Error("EXECABORT Transaction discarded because of previous errors.")
        if not broker.keyspace.check_watch(client.watch):
            return NULL_ARRAY
        return [broker.call(client, COMMANDS[args[0].lower()], args) for args in queued]
    finally:
        broker.keyspace.unwatch(client.watch)


@command("discard", 1, control=True)
def _discard(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    if client.queued is None:
        raise CommandError("ERR DISCARD without MULTI")
    client.queued = None
    client.queue_failed = False
    broker.keyspace.unwatch(client.watch)
    return OK


@command("watch", -2, control=True)
def _watch(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    if client.queued is not None:
        raise CommandError("ERR WATCH inside MULTI is not allowed")
    for key in args[1:]:
        broker.keyspace.watch(key, client.watch)
    return OK


@command("unwatch", 1)
def _unwatch(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    broker.keyspace.unwatch(client.watch)
    return OK


# -- pub/sub -------------------------------------------------------------------------------


@command("publish", 3)
def _publish(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    return broker.publish(args[1], args[2])


@command("subscribe", -2, pubsub=True, no_multi=True)
def _subscribe(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    replies: list[Reply] = []
    for channel in args[1:]:
        if channel not in client.channels:
            client.channels[channel] = None
            broker.channels.subscribe(client, channel)
        replies.append(Push([b"subscribe", channel, client.subscriptions]))
    return Replies(replies)


@command("psubscribe", -2, pubsub=True, no_multi=True)
def _psubscribe(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    replies: list[Reply] = []
    for pattern in args[1:]:
        if pattern not in client.patterns:
            client.patterns[pattern] = None
            broker.channels.psubscribe(client, pattern)
        replies.append(Push([b"psubscribe", pattern, client.subscriptions]))
    return Replies(replies)


@command("unsubscribe", -1, pubsub=True, no_multi=True)
def _unsubscribe(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    replies: list[Reply] = []
    for channel in args[1:] or list(client.channels):
        if channel in client.channels:
            del client.channels[channel]
            broker.channels.unsubscribe(client, channel)
        replies.append(Push([b"unsubscribe", channel, client.subscriptions]))
    return Replies(replies or [Push([b"unsubscribe", None, client.subscriptions])])


@command("punsubscribe", -1, pubsub=True, no_multi=True)
def _punsubscribe(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    replies: list[Reply] = []
    for pattern in args[1:] or list(client.patterns):
        if pattern in client.patterns:
            del client.patterns[pattern]
            broker.channels.punsubscribe(client, pattern)
        replies.append(Push([b"punsubscribe", pattern, client.subscriptions]))
    return Replies(replies or [Push([b"punsubscribe", None, client.subscriptions])])


def _pubsub_numsub(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    replies: list[Reply] = []
    for channel in args[2:]:
        replies += [channel, len(broker.channels.receivers(channel)[0])]
    return replies


_PUBSUB: dict[bytes, tuple[Handler, int]] = {
    b"channels": (
        lambda broker, client, args: list[Reply](
            broker.channels.names(args[2] if len(args) > 2 else None)
        ),
        -2,
    ),
    b"numsub": (_pubsub_numsub, -2),
    b"numpat": (lambda broker, client, args: broker.channels.pattern_count, 2),
}


@command("pubsub", -2, pubsub=True)
def _pubsub(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    return _subcommand(args, _PUBSUB)(broker, client, args)


# -- scripting -------------------------------------------------------------------------------


def _run_script(broker: Broker, handler: ScriptHandler, args: list[bytes]) -> Reply:
    count = parse_int(args[2])
    if count < 0:
        raise CommandError("ERR Number of keys can't be negative")
    if count > len(args) - 3:
        raise CommandError("ERR Number of keys can't be greater than number of args")
    return handler(broker.keyspace, args[3 : 3 + count], args[3 + count :])


@command("eval", -3)
def _eval(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    handler = script_handler(args[1])
    broker.scripts[hashlib.sha1(args[1]).hexdigest().encode()] = handler
    return _run_script(broker, handler, args)


@command("evalsha", -3)
def _evalsha(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    handler = broker.scripts.get(args[1].lower())
    if handler is None:
        raise CommandError("NOSCRIPT No matching script. Please use EVAL.")
    return _run_script(broker, handler, args)


def _script_load(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    handler = script_handler(args[2])
    sha = hashlib.sha1(args[2]).hexdigest().encode()
    broker.scripts[sha] = handler
    return sha


def _script_flush(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    broker.scripts.clear()
    return OK


_SCRIPT: dict[bytes, tuple[Handler, int]] = {
    b"load": (_script_load, 3),
    b"exists": (
        lambda broker, client, args: [int(sha.lower() in broker.scripts) for sha in args[2:]],
        -3,
    ),
    b"flush": (_script_flush, -2),
}


@command("script", -2)
def _script(broker: Broker, client: Client, args: list[bytes]) -> Reply:
    return _subcommand(args, _SCRIPT)(broker, client, args)
