"""Data packets between SDK participants: reliable, lossy, targeted, RPC and text streams."""

from __future__ import annotations

import asyncio

import pytest
from livekit import rtc

from tests.e2e.harness import ServerProcess
from tests.e2e.sdk import EventLog, connect, joined, wait_until

pytestmark = pytest.mark.sdk


async def test_reliable_lossy_and_targeted_data(server: ServerProcess) -> None:
    async with (
        joined(server, "sender", "data") as sender,
        joined(server, "r1", "data") as r1,
        joined(server, "r2", "data") as r2,
    ):
        got1 = EventLog(r1, "data_received")
        got2 = EventLog(r2, "data_received")
        echo = EventLog(sender, "data_received")
        await wait_until(lambda: {"r1", "r2"} <= set(sender.remote_participants))
        local = sender.local_participant
        await local.publish_data(b"to-all", topic="news")
        await local.publish_data(b"only-r2", topic="dm", destination_identities=["r2"])
        for received in (got1, got2):
            packet = await received.wait_for(lambda p: p.data == b"to-all")
            assert packet.topic == "news"
            assert packet.participant.identity == "sender"
            assert packet.kind == rtc.DataPacketKind.KIND_RELIABLE
        targeted = await got2.wait_for(lambda p: p.data == b"only-r2")
        assert targeted.topic == "dm"
        assert targeted.participant.identity == "sender"
        # Lossy data may in principle be dropped; on loopback some of a burst must arrive.
        for index in range(20):
            await local.publish_data(f"lossy-{index}".encode(), reliable=False, topic="fast")
        lossy = await got1.wait_for(lambda p: p.data.startswith(b"lossy-"))
        assert lossy.kind == rtc.DataPacketKind.KIND_LOSSY
        assert lossy.topic == "fast"
        await asyncio.sleep(0.3)
        assert not [p for p in got1.items if p.data == b"only-r2"]
        assert not echo.items, "the sender must never receive its own packets"


async def test_reliable_data_sent_as_soon_as_peer_connects(server: ServerProcess) -> None:
    async with joined(server, "early-sender", "early") as sender:
        late = rtc.Room()
        received = EventLog(late, "data_received")
        try:
            await connect_into(late, server, "late", "early")
            # The peer's connect() has returned: reliable data must not be lost even if its
            # data channel has not opened on the server yet.
            for index in range(10):
                await sender.local_participant.publish_data(f"m{index}".encode())
            await received.wait_for(lambda p: p.data == b"m9")
            assert [p.data for p in received.items] == [f"m{i}".encode() for i in range(10)]
        finally:
            await late.disconnect()


async def connect_into(room: rtc.Room, server: ServerProcess, identity: str, name: str) -> None:
    from tests.e2e.harness import make_token

    await asyncio.wait_for(room.connect(server.ws_url, make_token(identity, name)), 15)


async def test_data_sent_right_after_own_connect(server: ServerProcess) -> None:
    async with joined(server, "listener", "own-connect") as listener:
        received = EventLog(listener, "data_received")
        talker = await connect(server, "talker", "own-connect")
        try:
            await talker.local_participant.publish_data(b"first words")
            packet = await received.wait_for()
            assert packet.data == b"first words"
            assert packet.participant.identity == "talker"
        finally:
            await talker.disconnect()


async def test_rpc_between_participants(server: ServerProcess) -> None:
    async with joined(server, "caller", "rpc") as caller, joined(server, "callee", "rpc") as callee:
        calls: list[rtc.RpcInvocationData] = []

        async def square(data: rtc.RpcInvocationData) -> str:
            calls.append(data)
            return str(int(data.payload) ** 2)

        callee.local_participant.register_rpc_method("square", square)

        await wait_until(lambda: "callee" in caller.remote_participants)
        result = await caller.local_participant.perform_rpc(
            destination_identity="callee", method="square", payload="12"
        )
        assert result == "144"
        assert calls[0].caller_identity == "caller"
        with pytest.raises(rtc.RpcError):
            await caller.local_participant.perform_rpc(
                destination_identity="callee", method="missing", payload=""
            )


async def test_text_stream_between_participants(server: ServerProcess) -> None:
    async with (
        joined(server, "writer", "text") as writer,
        joined(server, "reader", "text") as reader,
    ):
        texts: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()

        async def consume(stream: rtc.TextStreamReader, identity: str) -> None:
            texts.put_nowait((await stream.read_all(), identity, stream.info.topic))

        tasks: set[asyncio.Task[None]] = set()

        def on_stream(stream: rtc.TextStreamReader, identity: str) -> None:
            task = asyncio.get_running_loop().create_task(consume(stream, identity))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        reader.register_text_stream_handler("chat", on_stream)
        await wait_until(lambda: "reader" in writer.remote_participants)
        long_text = "hello " * 5000  # several chunks
        await writer.local_participant.send_text(long_text, topic="chat")
        text, identity, topic = await asyncio.wait_for(texts.get(), 15)
        assert text == long_text
        assert identity == "writer"
        assert topic == "chat"


async def test_data_needs_publish_data_permission(server: ServerProcess) -> None:
    async with (
        joined(server, "muted", "perm", can_publish=False, can_publish_data=False) as muted,
        joined(server, "ear", "perm") as ear,
    ):
        received = EventLog(ear, "data_received")
        await wait_until(lambda: "muted" in ear.remote_participants)
        await asyncio.wait_for(muted.local_participant.publish_data(b"forbidden"), 5)
        await asyncio.sleep(0.5)
        assert not received.items
