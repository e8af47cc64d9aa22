"""The embedded broker driven by the real ``redis.asyncio`` client over a Unix socket.

Each client test runs twice: with redis-py's default protocol (RESP3 since redis-py 8, which
sends ``HELLO 3`` on connect) and with ``protocol=2`` (what redis-py 5-7 use by default).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError

from routing.embedded import EmbeddedRedis
from routing.embedded_keys import COMPARE_AND_DELETE

ROOT = Path(__file__).resolve().parents[2]

#: The lock release script exactly as the Redis store writes it.
RELEASE_LOCK = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
else
    return 0
end
"""

Connect = Callable[..., "redis.Redis"]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    async with EmbeddedRedis(str(tmp_path / "redis.sock")) as server:
        yield server


@pytest.fixture(params=[None, 2], ids=["default-protocol", "resp2"])
async def connect(broker: EmbeddedRedis, request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    clients: list[redis.Redis] = []

    def make(**options: Any) -> redis.Redis:
        client = redis.Redis(unix_socket_path=broker.path, protocol=request.param, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def test_strings_with_expiry(connect: Connect, broker: EmbeddedRedis) -> None:
    r = connect()
    assert await r.ping() is True
    assert await r.set("a", "1") is True
    assert await r.get("a") == b"1"
    assert await r.set("a", "2", get=True) == b"1"
    assert await r.set("a", "3", xx=True) is True
    assert await r.set("missing", "3", xx=True) is None
    assert await r.set("t", "x", ex=10) is True
    assert await r.ttl("t") == 10
    assert 9000 < await r.pttl("t") <= 10000
    assert await r.set("short", "x", px=50) is True
    await asyncio.sleep(0.15)
    assert await r.get("short") is None
    assert await r.pttl("short") == -2
    assert await r.expire("a", 100) is True
    assert await r.ttl("a") == 100
    assert await r.persist("a") is True
    assert await r.ttl("a") == -1
    assert await r.pexpire("a", 50) is True
    await asyncio.sleep(0.3)  # nobody looks at "a": the sweep removes it
    assert b"a" not in broker.broker.keyspace.keys()
    assert await r.incr("n") == 1
    assert await r.incrby("n", 5) == 6
    assert await r.exists("n", "t", "a") == 2
    assert await r.delete("n", "t", "a") == 2
    assert await r.echo("hi") == b"hi"


async def test_room_lock_with_set_nx_and_compare_and_delete(connect: Connect) -> None:
    node_a, node_b = connect(), connect()
    key = "room_lock:r1"
    assert await node_a.set(key, "token-a", nx=True, px=5000) is True
    assert await node_b.set(key, "token-b", nx=True, px=5000) is None
    release = node_b.register_script(RELEASE_LOCK)
    assert await release(keys=[key], args=["token-b"]) == 0  # not ours: left alone
    assert await node_b.get(key) == b"token-a"
    assert await release(keys=[key], args=["token-a"]) == 1
    assert await node_b.set(key, "token-b", nx=True, px=5000) is True
    assert await node_a.eval(COMPARE_AND_DELETE, 1, key, "token-b") == 1
    assert await node_a.exists(key) == 0
    async with node_a.pipeline() as pipe:  # SCRIPT EXISTS / LOAD, then EVALSHA in MULTI
        pipe.set(key, "token-c")
        await release(keys=[key], args=["token-c"], client=pipe)
        assert await pipe.execute() == [True, 1]
    with pytest.raises(ResponseError, match="runs no Lua"):
        await node_a.eval("return redis.call('flushall')", 0)


async def test_hashes(connect: Connect) -> None:
    r = connect()
    assert await r.hset("room_participants:r1", mapping={"alice": "A", "bob": "B"}) == 2
    assert await r.hset("room_participants:r1", "alice", "A2") == 0
    assert await r.hget("room_participants:r1", "alice") == b"A2"
    assert await r.hmget("room_participants:r1", ["alice", "nobody", "bob"]) == [
        b"A2",
        None,
        b"B",
    ]
    assert await r.hgetall("room_participants:r1") == {b"alice": b"A2", b"bob": b"B"}
    assert await r.hkeys("room_participants:r1") == [b"alice", b"bob"]
    assert await r.hvals("room_participants:r1") == [b"A2", b"B"]
    assert await r.hlen("room_participants:r1") == 2
    assert await r.hexists("room_participants:r1", "bob") is True
    assert await r.hexists("room_participants:r1", "carol") is False
    assert await r.hsetnx("room_participants:r1", "bob", "B2") == 0
    assert await r.hsetnx("room_participants:r1", "carol", "C") == 1
    assert await r.hdel("room_participants:r1", "alice", "bob", "carol", "dave") == 3
    assert await r.exists("room_participants:r1") == 0
    assert await r.hgetall("room_participants:r1") == {}
    await r.set("plain", "1")
    with pytest.raises(ResponseError, match=r"^WRONGTYPE"):
        await r.hget("plain", "f")
    await r.hset("nodes", "ND_1", "x")
    with pytest.raises(ResponseError, match=r"^WRONGTYPE"):
        await r.get("nodes")


async def test_keys_and_scan_match(connect: Connect) -> None:
    r = connect()
    async with r.pipeline(transaction=False) as pipe:
        for i in range(30):
            pipe.set(f"room:{i}", i)
        pipe.hset("nodes", "ND_1", "x")
        await pipe.execute()
    expected = sorted([b"room:1"] + [b"room:1%d" % i for i in range(10)])
    assert sorted(await r.keys("room:1*")) == expected
    scanned = [key async for key in r.scan_iter(match="room:*", count=7)]
    assert sorted(scanned) == sorted(b"room:%d" % i for i in range(30))
    assert [key async for key in r.scan_iter(_type="HASH")] == [b"nodes"]
    assert await r.dbsize() == 31


async def _read_messages(pubsub: Any, count: int) -> list[Any]:
    messages: list[Any] = []
    async with asyncio.timeout(10):
        while len(messages) < count:
            message = await pubsub.get_message(timeout=1)
            if message is not None:
                messages.append(message)
    return messages


async def test_pubsub_keeps_order_across_1000_messages(connect: Connect) -> None:
    subscriber, publisher = connect(), connect()
    pubsub: Any = subscriber.pubsub()
    await pubsub.subscribe("signal:a")
    confirmation = await pubsub.get_message(timeout=1)
    assert confirmation is not None
    assert (confirmation["type"], confirmation["channel"], confirmation["data"]) == (
        "subscribe",
        b"signal:a",
        1,
    )
    for i in range(1000):
        assert await publisher.publish("signal:a", b"%d" % i) == 1
    messages = await _read_messages(pubsub, 1000)
    assert [m["type"] for m in messages] == ["message"] * 1000
    assert [m["data"] for m in messages] == [b"%d" % i for i in range(1000)]
    await pubsub.unsubscribe("signal:a")
    assert (await _read_messages(pubsub, 1))[0]["type"] == "unsubscribe"
    assert await publisher.publish("signal:a", b"late") == 0
    await pubsub.aclose()


async def test_psubscribe_and_listen_keep_each_publishers_order(connect: Connect) -> None:
    subscriber = connect()
    publishers = [connect(), connect()]
    pubsub: Any = subscriber.pubsub()
    await pubsub.psubscribe("node:*")

    async def publish(index: int) -> None:
        async with publishers[index].pipeline(transaction=False) as pipe:
            for i in range(500):
                pipe.publish(f"node:{index}", b"%d" % i)
            assert await pipe.execute() == [1] * 500

    await asyncio.gather(publish(0), publish(1))
    received: dict[bytes, list[bytes]] = {b"node:0": [], b"node:1": []}
    async with asyncio.timeout(10):
        async for message in pubsub.listen():
            if message["type"] == "psubscribe":
                assert message["channel"] == b"node:*"
                continue
            assert (message["type"], message["pattern"]) == ("pmessage", b"node:*")
            received[message["channel"]].append(message["data"])
            if sum(len(data) for data in received.values()) == 1000:
                break
    assert received[b"node:0"] == received[b"node:1"] == [b"%d" % i for i in range(500)]
    await pubsub.aclose()


async def test_pipelines_and_transactions(connect: Connect) -> None:
    r, other = connect(), connect()
    async with r.pipeline() as pipe:
        pipe.set("k", "1")
        pipe.incr("k")
        pipe.get("k")
        pipe.hset("h", "f", "v")
        pipe.hgetall("h")
        assert await pipe.execute() == [True, 2, b"2", 1, {b"f": b"v"}]
    async with r.pipeline(transaction=False) as pipe:
        for _ in range(200):
            pipe.incr("counter")
        assert await pipe.execute() == list(range(1, 201))
    async with r.pipeline() as pipe:
        pipe.set("s", "x")
        pipe.incr("s")
        pipe.get("s")
        results = await pipe.execute(raise_on_error=False)
    assert results[0] is True and isinstance(results[1], ResponseError) and results[2] == b"x"
    async with r.pipeline() as pipe:
        await pipe.watch("w")
        await other.set("w", "theirs")
        pipe.multi()
        pipe.set("w", "mine")
        with pytest.raises(WatchError):
            await pipe.execute()
    assert await r.get("w") == b"theirs"

    async def bump(pipe: Any) -> None:
        value = int(await pipe.get("c") or 0)
        pipe.multi()
        pipe.set("c", value + 1)

    await r.transaction(bump, "c")
    await r.transaction(bump, "c")
    assert await other.get("c") == b"2"


async def test_two_clients_see_each_other(connect: Connect, broker: EmbeddedRedis) -> None:
    worker_1 = connect(client_name="worker-1")
    worker_2 = redis.from_url(broker.url)
    try:
        await worker_1.hset("nodes", "ND_1", "serving")
        assert await worker_2.hget("nodes", "ND_1") == b"serving"
        assert await worker_1.client_getname() == "worker-1"
        assert await worker_1.client_id() != await worker_2.client_id()
        names = {entry["name"] for entry in await worker_2.client_list()}
        assert "worker-1" in names
        assert (await worker_2.info())["redis_version"]
        with pytest.raises(ResponseError, match="unknown command 'NOPE'"):
            await worker_2.execute_command("NOPE", "x")
    finally:
        await worker_2.aclose()


@pytest.mark.parametrize(
    ("garbage", "error"),
    [
        (b"*1\r\n$x\r\n", b"invalid bulk length"),
        (b"GET k\r\n", b"expected '*', got 'G'"),
        (b"*2\r\n$3\r\nGET\r\n:1\r\n", b"expected '$', got ':'"),
        (b"*1\r\n$999999999\r\n", b"invalid bulk length"),
        (b"\xff\x00" * 40, b"expected '*', got '\\xff'"),
    ],
)
async def test_malformed_input_closes_only_that_connection(
    connect: Connect, broker: EmbeddedRedis, garbage: bytes, error: bytes
) -> None:
    good = connect()
    await good.set("k", "v")
    reader, writer = await asyncio.open_unix_connection(broker.path)
    try:
        writer.write(b"*1\r\n$4\r\nPING\r\n" + garbage)
        async with asyncio.timeout(5):
            reply = await reader.read()  # to EOF: the broker hangs up
        assert reply == b"+PONG\r\n-ERR Protocol error: " + error + b"\r\n"
    finally:
        writer.close()
        await writer.wait_closed()
    assert await good.get("k") == b"v"


async def test_raw_resp2_subscriber_is_restricted(broker: EmbeddedRedis) -> None:
    reader, writer = await asyncio.open_unix_connection(broker.path)
    try:
        writer.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        writer.write(b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nQUIT\r\n")
        async with asyncio.timeout(5):
            reply = await reader.read()
        assert reply == (
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"
            b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / "
            b"RESET are allowed in this context\r\n"
            b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
            b"+OK\r\n"
        )
    finally:
        writer.close()
        await writer.wait_closed()


async def test_slow_subscriber_is_cut_off_without_holding_up_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "redis.sock")
    async with EmbeddedRedis(path, pubsub_limit=256 * 1024) as server:
        _, writer = await asyncio.open_unix_connection(path)  # subscribes, never reads
        publisher = redis.Redis(unix_socket_path=path)
        listener = redis.Redis(unix_socket_path=path)
        pubsub: Any = listener.pubsub()
        try:
            writer.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$5\r\nstats\r\n")
            await pubsub.subscribe("stats")
            await _read_messages(pubsub, 1)
            reading = asyncio.create_task(_read_messages(pubsub, 4000))
            payload = b"x" * 1024
            with caplog.at_level(logging.WARNING, logger="routing.embedded"):
                counts = [await publisher.publish("stats", payload) for _ in range(4000)]
            assert counts[0] == 2 and counts[-1] == 1
            assert "disconnecting subscriber" in caplog.text
            assert len(await reading) == 4000
            assert len(server.broker.clients) == 2
        finally:
            writer.close()
            await pubsub.aclose()
            await listener.aclose()
            await publisher.aclose()


async def test_stop_with_clients_connected_leaves_no_tasks(tmp_path: Path) -> None:
    path = str(tmp_path / "redis.sock")
    before = asyncio.all_tasks()
    server = EmbeddedRedis(path)
    await server.start()
    client = redis.Redis(unix_socket_path=path, retry=Retry(NoBackoff(), 0))
    pubsub: Any = client.pubsub()
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        await pubsub.subscribe("c")
        await client.set("k", "v")  # a second connection: the pub/sub one is taken
        writer.write(b"*2\r\n$3\r\nGET\r\n$1")  # half a command
        await writer.drain()
        await asyncio.sleep(0.05)
        assert len(server.broker.clients) == 3
        await server.stop()
        assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()
        assert not await asyncio.to_thread(Path(path).exists)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        with pytest.raises(RedisConnectionError):
            await client.get("k")
    finally:
        writer.close()
        await pubsub.aclose()
        await client.aclose()
        await server.stop()  # a second stop is harmless


async def test_runs_standalone(tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "routing.embedded", str(path), cwd=ROOT, stderr=PIPE
    )
    assert process.stderr is not None
    try:
        async with asyncio.timeout(10):
            assert b"listening on" in await process.stderr.readline()
        client = redis.Redis(unix_socket_path=str(path))
        assert await client.ping() is True
        await client.aclose()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await process.wait() == 0
        assert not await asyncio.to_thread(path.exists)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
