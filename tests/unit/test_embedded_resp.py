"""The embedded broker's wire format and command core, without sockets or an event loop."""

from __future__ import annotations

import pytest

from routing.embedded_commands import Broker, Client
from routing.embedded_keys import COMPARE_AND_DELETE
from routing.embedded_store import glob_match
from routing.resp import (
    NULL_ARRAY,
    OK,
    Error,
    Map,
    Push,
    Replies,
    Reply,
    RespParser,
    Status,
    Verbatim,
    encode,
)


def command(*args: bytes) -> bytes:
    return encode(list[Reply](args))


# -- parser --------------------------------------------------------------------------------


def test_parses_a_command() -> None:
    assert RespParser().feed(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n") == [[b"GET", b"k"]]


def test_pipelined_commands_come_out_in_order() -> None:
    data = b"".join(command(b"INCR", b"n%d" % i) for i in range(100))
    assert RespParser().feed(data) == [[b"INCR", b"n%d" % i] for i in range(100)]


def test_input_split_anywhere_parses_the_same() -> None:
    data = command(b"SET", b"key", b"value") + command(b"PING")
    for cut in range(len(data) + 1):
        parser = RespParser()
        assert parser.feed(data[:cut]) + parser.feed(data[cut:]) == [
            [b"SET", b"key", b"value"],
            [b"PING"],
        ]


def test_byte_by_byte() -> None:
    parser = RespParser()
    data = command(b"HSET", b"h", b"f", b"v") * 3
    commands = [cmd for i in range(len(data)) for cmd in parser.feed(data[i : i + 1])]
    assert commands == [[b"HSET", b"h", b"f", b"v"]] * 3
    assert parser.error is None


def test_bulk_strings_are_binary_safe() -> None:
    payload = bytes(range(256)) + b"\r\n*1\r\n$4\r\n"
    assert RespParser().feed(command(b"PUBLISH", b"c", payload)) == [[b"PUBLISH", b"c", payload]]


def test_empty_bulk_and_empty_multibulk() -> None:
    assert RespParser().feed(b"*0\r\n*-1\r\n*1\r\n$0\r\n\r\n") == [[b""]]


def test_large_bulk_arrives_in_pieces() -> None:
    payload = b"x" * (3 * 1024 * 1024 + 7)
    data = command(b"SET", b"big", payload)
    parser = RespParser()
    commands: list[list[bytes]] = []
    for start in range(0, len(data), 65536):
        commands += parser.feed(data[start : start + 65536])
    assert commands == [[b"SET", b"big", payload]]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"PING\r\n", "expected '*', got 'P'"),
        (b"\r\n", "expected '*', got '\\x0d'"),
        (b"*x\r\n", "invalid multibulk length"),
        (b"*+1\r\n", "invalid multibulk length"),
        (b"* 1\r\n", "invalid multibulk length"),
        (b"*1\r\n:1\r\n", "expected '$', got ':'"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$1x\r\n", "invalid bulk length"),
        (b"*1\r\n$3\r\nabcd\r\n", "expected CRLF after bulk string"),
        (b"*" + b"9" * 40, "too big multibulk count string"),
        (b"*1\r\n$" + b"1" * 40, "too big bulk count string"),
        (b"*1048577\r\n", "invalid multibulk length"),
        (b"*1\r\n$67108865\r\n", "invalid bulk length"),
    ],
)
def test_malformed_input_is_refused(data: bytes, reason: str) -> None:
    parser = RespParser()
    assert parser.feed(data) == []
    assert parser.error == reason


def test_limits_are_settable() -> None:
    parser = RespParser(max_args=2)
    parser.feed(b"*3\r\n")
    assert parser.error == "invalid multibulk length"
    parser = RespParser(max_bulk=4)
    parser.feed(b"*1\r\n$5\r\n")  # refused before the data arrives
    assert parser.error == "invalid bulk length"


def test_commands_before_garbage_still_count_and_nothing_after() -> None:
    parser = RespParser()
    assert parser.feed(command(b"PING") + b"!garbage" + command(b"ECHO", b"x")) == [[b"PING"]]
    assert parser.error == "expected '*', got '!'"
    assert parser.feed(command(b"PING")) == []


# -- serializer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "resp2", "resp3"),
    [
        (OK, b"+OK\r\n", b"+OK\r\n"),
        (Error("ERR bad"), b"-ERR bad\r\n", b"-ERR bad\r\n"),
        (42, b":42\r\n", b":42\r\n"),
        (-1, b":-1\r\n", b":-1\r\n"),
        (b"v\r\n", b"$3\r\nv\r\n\r\n", b"$3\r\nv\r\n\r\n"),
        (b"", b"$0\r\n\r\n", b"$0\r\n\r\n"),
        (None, b"$-1\r\n", b"_\r\n"),
        (NULL_ARRAY, b"*-1\r\n", b"_\r\n"),
        ([], b"*0\r\n", b"*0\r\n"),
        (
            [b"a", [1, None]],
            b"*2\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n",
            b"*2\r\n$1\r\na\r\n*2\r\n:1\r\n_\r\n",
        ),
        (Map([(b"k", b"v")]), b"*2\r\n$1\r\nk\r\n$1\r\nv\r\n", b"%1\r\n$1\r\nk\r\n$1\r\nv\r\n"),
        (Push([b"message", 1]), b"*2\r\n$7\r\nmessage\r\n:1\r\n", b">2\r\n$7\r\nmessage\r\n:1\r\n"),
        (Verbatim(b"a:1"), b"$3\r\na:1\r\n", b"=7\r\ntxt:a:1\r\n"),
        (Replies([OK, 1]), b"+OK\r\n:1\r\n", b"+OK\r\n:1\r\n"),
    ],
)
def test_encodes_as_redis_does(reply: Reply, resp2: bytes, resp3: bytes) -> None:
    assert encode(reply, 2) == resp2
    assert encode(reply, 3) == resp3


def test_simple_strings_and_errors_cannot_break_the_framing() -> None:
    assert encode(Error("ERR one\r\ntwo")) == b"-ERR one  two\r\n"
    assert encode(Status("a\nb")) == b"+a b\r\n"


# -- the command core, driven without sockets --------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def broker(clock: Clock) -> Broker:
    return Broker(clock)


def connect(broker: Broker) -> tuple[Client, list[bytes]]:
    received: list[bytes] = []
    return broker.connect(received.append), received


def run(broker: Broker, client: Client, *args: bytes) -> Reply:
    return broker.execute(client, list(args))


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        (b"room:*", b"room:a", True),
        (b"room:*", b"rooms", False),
        (b"h?llo", b"hello", True),
        (b"h[ae]llo", b"hallo", True),
        (b"h[^e]llo", b"hello", False),
        (b"h[a-c]llo", b"hbllo", True),
        (b"h[c-a]llo", b"hbllo", True),
        (b"h\\*llo", b"h*llo", True),
        (b"h\\*llo", b"hello", False),
        (b"a.b", b"axb", False),
        (b"[abc", b"[abc", True),
        (b"*", b"line\nbreak", True),
    ],
)
def test_glob(pattern: bytes, subject: bytes, matches: bool) -> None:
    assert glob_match(pattern, subject) is matches


def test_keys_expire_lazily_and_in_the_sweep(broker: Broker, clock: Clock) -> None:
    client, _ = connect(broker)
    assert run(broker, client, b"SET", b"a", b"1", b"PX", b"1500") == OK
    assert run(broker, client, b"SET", b"b", b"1", b"EX", b"1") == OK
    assert run(broker, client, b"TTL", b"a") == 2
    assert run(broker, client, b"PTTL", b"b") == 1000
    clock.now += 1.2
    assert run(broker, client, b"GET", b"b") is None
    assert run(broker, client, b"TTL", b"b") == -2
    assert run(broker, client, b"EXISTS", b"a", b"b") == 1
    clock.now += 1
    assert broker.keyspace.sweep() == 1
    assert len(broker.keyspace) == 0


def test_expire_options(broker: Broker) -> None:
    client, _ = connect(broker)
    run(broker, client, b"SET", b"k", b"v")
    assert run(broker, client, b"EXPIRE", b"k", b"10", b"XX") == 0
    assert run(broker, client, b"EXPIRE", b"k", b"10", b"NX") == 1
    assert run(broker, client, b"EXPIRE", b"k", b"5", b"GT") == 0
    assert run(broker, client, b"EXPIRE", b"k", b"20", b"GT") == 1
    assert run(broker, client, b"TTL", b"k") == 20
    assert run(broker, client, b"EXPIRE", b"k", b"1", b"NX", b"GT") == Error(
        "ERR NX and XX, GT or LT options at the same time are not compatible"
    )
    assert run(broker, client, b"SET", b"k", b"w", b"KEEPTTL") == OK
    assert run(broker, client, b"TTL", b"k") == 20
    assert run(broker, client, b"PEXPIRE", b"k", b"0") == 1
    assert run(broker, client, b"EXISTS", b"k") == 0


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((b"SET", b"k", b"v", b"NX", b"XX"), "ERR syntax error"),
        ((b"SET", b"k", b"v", b"EX", b"1", b"PX", b"1"), "ERR syntax error"),
        ((b"SET", b"k", b"v", b"EX"), "ERR syntax error"),
        ((b"SET", b"k", b"v", b"EX", b"x"), "ERR value is not an integer or out of range"),
        ((b"SET", b"k", b"v", b"EX", b"0"), "ERR invalid expire time in 'set' command"),
        ((b"GET",), "ERR wrong number of arguments for 'get' command"),
        ((b"HSET", b"h", b"f"), "ERR wrong number of arguments for 'hset' command"),
        ((b"HSET", b"h", b"f", b"v", b"g"), "ERR wrong number of arguments for 'hset' command"),
        ((b"SELECT", b"1"), "ERR DB index is out of range"),
        ((b"HELLO", b"4"), "NOPROTO unsupported protocol version"),
        ((b"EVALSHA", b"ab", b"0"), "NOSCRIPT No matching script. Please use EVAL."),
        ((b"CLIENT", b"NOPE"), "ERR unknown subcommand 'NOPE'. Try CLIENT HELP."),
        ((b"FOO", b"a", b"b"), "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "),
    ],
)
def test_errors_read_as_redis_writes_them(
    broker: Broker, args: tuple[bytes, ...], error: str
) -> None:
    client, _ = connect(broker)
    assert run(broker, client, *args) == Error(error)


def test_wrongtype(broker: Broker) -> None:
    client, _ = connect(broker)
    run(broker, client, b"HSET", b"h", b"f", b"v")
    run(broker, client, b"SET", b"s", b"1")
    wrongtype = Error("WRONGTYPE Operation against a key holding the wrong kind of value")
    assert run(broker, client, b"GET", b"h") == wrongtype
    assert run(broker, client, b"INCR", b"h") == wrongtype
    assert run(broker, client, b"HGET", b"s", b"f") == wrongtype
    assert run(broker, client, b"HGETALL", b"s") == wrongtype
    assert run(broker, client, b"SET", b"h", b"x", b"GET") == wrongtype
    assert run(broker, client, b"SET", b"h", b"x") == OK  # plain SET replaces any type


def test_incr(broker: Broker) -> None:
    client, _ = connect(broker)
    assert run(broker, client, b"INCR", b"n") == 1
    assert run(broker, client, b"INCRBY", b"n", b"41") == 42
    run(broker, client, b"SET", b"n", b"9223372036854775807")
    assert run(broker, client, b"INCR", b"n") == Error("ERR increment or decrement would overflow")
    run(broker, client, b"SET", b"n", b" 1")
    assert run(broker, client, b"INCR", b"n") == Error(
        "ERR value is not an integer or out of range"
    )


def test_hash_emptied_is_deleted(broker: Broker) -> None:
    client, _ = connect(broker)
    assert run(broker, client, b"HSET", b"h", b"a", b"1", b"b", b"2") == 2
    assert run(broker, client, b"HSET", b"h", b"a", b"3") == 0
    assert run(broker, client, b"HGETALL", b"h") == Map([(b"a", b"3"), (b"b", b"2")])
    assert run(broker, client, b"HDEL", b"h", b"a", b"b", b"c") == 2
    assert run(broker, client, b"TYPE", b"h") == Status("none")


def test_exec_runs_the_queue_unless_a_watched_key_changed(broker: Broker) -> None:
    client, _ = connect(broker)
    other, _ = connect(broker)
    assert run(broker, client, b"MULTI") == OK
    assert run(broker, client, b"SET", b"k", b"1") == Status("QUEUED")
    assert run(broker, client, b"INCR", b"k") == Status("QUEUED")
    assert run(broker, client, b"EXEC") == [OK, 2]
    run(broker, client, b"WATCH", b"k")
    run(broker, other, b"SET", b"k", b"changed")
    run(broker, client, b"MULTI")
    run(broker, client, b"SET", b"k", b"mine")
    assert run(broker, client, b"EXEC") is NULL_ARRAY
    assert run(broker, client, b"GET", b"k") == b"changed"
    run(broker, client, b"WATCH", b"k")  # EXEC unwatched everything: this is a fresh watch
    run(broker, client, b"MULTI")
    run(broker, client, b"SET", b"k", b"mine")
    assert run(broker, client, b"EXEC") == [OK]


def test_watched_key_expiring_fails_exec(broker: Broker, clock: Clock) -> None:
    client, _ = connect(broker)
    run(broker, client, b"SET", b"k", b"v", b"PX", b"100")
    run(broker, client, b"WATCH", b"k")
    clock.now += 1
    run(broker, client, b"MULTI")
    assert run(broker, client, b"EXEC") is NULL_ARRAY


def test_a_refused_command_aborts_the_transaction(broker: Broker) -> None:
    client, _ = connect(broker)
    run(broker, client, b"MULTI")
    run(broker, client, b"SET", b"k", b"v")
    assert isinstance(run(broker, client, b"NOPE"), Error)
    assert run(broker, client, b"EXEC") == Error(
        "EXECABORT Transaction discarded because of previous errors."
    )
    assert run(broker, client, b"EXISTS", b"k") == 0


def test_publish_reaches_channels_and_patterns_in_order(broker: Broker) -> None:
    subscriber, frames = connect(broker)
    publisher, _ = connect(broker)
    assert run(broker, subscriber, b"SUBSCRIBE", b"a", b"b") == Replies(
        [Push([b"subscribe", b"a", 1]), Push([b"subscribe", b"b", 2])]
    )
    run(broker, subscriber, b"PSUBSCRIBE", b"a*")
    for i in range(3):
        assert run(broker, publisher, b"PUBLISH", b"a", b"%d" % i) == 2
    assert run(broker, publisher, b"PUBLISH", b"c", b"x") == 0
    expected: list[bytes] = []
    for i in range(3):
        expected.append(encode(Push([b"message", b"a", b"%d" % i])))
        expected.append(encode(Push([b"pmessage", b"a*", b"a", b"%d" % i])))
    assert frames == expected
    assert run(broker, subscriber, b"UNSUBSCRIBE") == Replies(
        [Push([b"unsubscribe", b"a", 2]), Push([b"unsubscribe", b"b", 1])]
    )
    assert run(broker, subscriber, b"PUNSUBSCRIBE", b"a*") == Replies(
        [Push([b"punsubscribe", b"a*", 0])]
    )
    assert run(broker, subscriber, b"UNSUBSCRIBE") == Replies([Push([b"unsubscribe", None, 0])])


def test_resp2_subscribers_may_only_subscribe_and_ping(broker: Broker) -> None:
    client, _ = connect(broker)
    run(broker, client, b"SUBSCRIBE", b"a")
    assert run(broker, client, b"PING") == [b"pong", b""]
    assert run(broker, client, b"GET", b"k") == Error(
        "ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET "
        "are allowed in this context"
    )
    assert isinstance(run(broker, client, b"HELLO", b"3"), Error)  # as Redis: not even HELLO
    resp3, _ = connect(broker)
    run(broker, resp3, b"HELLO", b"3")
    run(broker, resp3, b"SUBSCRIBE", b"a")
    assert run(broker, resp3, b"GET", b"k") is None
    assert run(broker, resp3, b"PING") == Status("PONG")


def test_disconnect_drops_subscriptions(broker: Broker) -> None:
    subscriber, frames = connect(broker)
    publisher, _ = connect(broker)
    run(broker, subscriber, b"SUBSCRIBE", b"a")
    run(broker, subscriber, b"PSUBSCRIBE", b"*")
    broker.disconnect(subscriber)
    assert run(broker, publisher, b"PUBLISH", b"a", b"x") == 0
    assert frames == []


@pytest.mark.parametrize(
    "script",
    [
        COMPARE_AND_DELETE,
        """
        if redis.call("get", KEYS[1]) == ARGV[1] then
            return redis.call("del", KEYS[1])
        else
            return 0
        end
        """,
        "if redis.call('GET',KEYS[1])==ARGV[1] then return redis.call('DEL',KEYS[1]) "
        "else return 0 end;",
    ],
)
def test_compare_and_delete_script(broker: Broker, script: str) -> None:
    client, _ = connect(broker)
    run(broker, client, b"SET", b"lock", b"token")
    assert run(broker, client, b"EVAL", script.encode(), b"1", b"lock", b"other") == 0
    assert run(broker, client, b"EVAL", script.encode(), b"1", b"lock", b"token") == 1
    assert run(broker, client, b"EXISTS", b"lock") == 0
    assert run(broker, client, b"EVAL", script.encode(), b"1", b"lock", b"token") == 0


def test_other_scripts_are_refused(broker: Broker) -> None:
    client, _ = connect(broker)
    reply = run(broker, client, b"EVAL", b"return redis.call('flushall')", b"0")
    assert isinstance(reply, Error) and reply.text.startswith("ERR the embedded broker runs no Lua")
    assert isinstance(run(broker, client, b"SCRIPT", b"LOAD", b"return 1"), Error)


def test_hello_switches_protocol_and_answers_a_map(broker: Broker) -> None:
    client, _ = connect(broker)
    reply = run(broker, client, b"HELLO", b"3", b"AUTH", b"default", b"x", b"SETNAME", b"w1")
    assert isinstance(reply, Map)
    assert dict(reply.items)[b"proto"] == 3
    assert client.protocol == 3
    assert run(broker, client, b"CLIENT", b"GETNAME") == b"w1"
    assert run(broker, client, b"HELLO", b"3", b"AUTH", b"admin", b"x") == Error(
        "WRONGPASS invalid username-password pair or user is disabled."
    )
