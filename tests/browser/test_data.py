"""Data between livekit-client in Chromium and the Python SDK: packets, RPC and text streams."""

from __future__ import annotations

import asyncio
from typing import Any

from livekit import rtc

from tests.browser.conftest import Pages
from tests.browser.driver import Page
from tests.e2e.harness import ServerProcess
from tests.e2e.sdk import EventLog, joined, wait_until


def _texts(items: list[dict[str, Any]]) -> list[str]:
    return [item["text"] for item in items]


async def _browser_sends_and_python_receives(page: Page, r1: rtc.Room, r2: rtc.Room) -> None:
    got1, got2 = EventLog(r1, "data_received"), EventLog(r2, "data_received")
    await page.lk("publishData", "to-all", {"reliable": True, "topic": "news"})
    await page.lk("publishData", "only-r2", {"reliable": True, "destinationIdentities": ["r2"]})
    for received in (got1, got2):
        packet = await received.wait_for(lambda p: p.data == b"to-all")
        assert packet.participant.identity == "chromium"
        assert packet.topic == "news"
        assert packet.kind == rtc.DataPacketKind.KIND_RELIABLE
    await got2.wait_for(lambda p: p.data == b"only-r2")
    for index in range(20):  # lossy may drop in principle; on loopback some must arrive
        await page.lk("publishData", f"lossy-{index}", {"reliable": False})
    lossy = await got1.wait_for(lambda p: p.data.startswith(b"lossy-"))
    assert lossy.kind == rtc.DataPacketKind.KIND_LOSSY
    await asyncio.sleep(0.3)
    assert b"only-r2" not in [p.data for p in got1.items]


async def test_data_both_ways_reliable_lossy_and_targeted(
    server: ServerProcess, pages: Pages
) -> None:
    async with (
        joined(server, "r1", "browser-data") as r1,
        joined(server, "r2", "browser-data") as r2,
    ):
        page = await pages.join("chromium", "browser-data")
        await wait_until(lambda: "chromium" in r1.remote_participants)
        await _browser_sends_and_python_receives(page, r1, r2)

        local = r1.local_participant
        await local.publish_data(b"hello browser", topic="greet")
        await local.publish_data(b"just you", destination_identities=["chromium"])
        for index in range(20):
            await local.publish_data(f"fast-{index}".encode(), reliable=False)
        data = await page.wait_for(
            "data", lambda d: {"hello browser", "just you"} <= set(_texts(d))
        )
        greeting = next(d for d in data if d["text"] == "hello browser")
        assert greeting == {
            "text": "hello browser",
            "from": "r1",
            "kind": "reliable",
            "topic": "greet",
        }
        lossy = await page.wait_for("data", lambda d: any(x["kind"] == "lossy" for x in d))
        assert any(x["text"].startswith("fast-") and x["kind"] == "lossy" for x in lossy)


async def test_data_after_publishing_media_first(server: ServerProcess, pages: Pages) -> None:
    """The browser's first publisher offer has only its media; the data channels come in a
    later renegotiation, which must start SCTP then."""
    async with (
        joined(server, "r1", "media-then-data") as r1,
        joined(server, "r2", "media-then-data") as r2,
    ):
        page = await pages.join("chromium", "media-then-data")
        await page.lk("setMicrophone", True)
        await wait_until(
            lambda: bool((p := r1.remote_participants.get("chromium")) and p.track_publications)
        )
        await _browser_sends_and_python_receives(page, r1, r2)


async def test_rpc_both_ways_and_text_streams(server: ServerProcess, pages: Pages) -> None:
    async with joined(server, "python", "browser-rpc") as python:
        calls: list[rtc.RpcInvocationData] = []

        async def shout(data: rtc.RpcInvocationData) -> str:
            calls.append(data)
            return data.payload.upper()

        python.local_participant.register_rpc_method("shout", shout)
        texts: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        readers: set[asyncio.Task[None]] = set()

        async def consume(stream: rtc.TextStreamReader, identity: str) -> None:
            texts.put_nowait((await stream.read_all(), identity))

        def on_stream(stream: rtc.TextStreamReader, identity: str) -> None:
            task = asyncio.get_running_loop().create_task(consume(stream, identity))
            readers.add(task)
            task.add_done_callback(readers.discard)

        python.register_text_stream_handler("chat", on_stream)
        page = await pages.join("chromium", "browser-rpc")
        await page.lk("registerRpc", "greet")
        await wait_until(lambda: "chromium" in python.remote_participants)

        assert await page.lk("performRpc", "python", "shout", "hello") == "HELLO"
        assert calls[0].caller_identity == "chromium"
        answer = await python.local_participant.perform_rpc(
            destination_identity="chromium", method="greet", payload="from python"
        )
        assert answer == "browser got from python"
        assert await page.lk("rpcCalls") == [{"from": "python", "payload": "from python"}]

        long_text = "browser says hi " * 2000  # several chunks
        await page.lk("sendText", long_text, "chat")
        assert await asyncio.wait_for(texts.get(), 15) == (long_text, "chromium")
        await python.local_participant.send_text("python says hi", topic="chat")
        received = await page.wait_for("texts", lambda t: bool(t))
        assert received == [{"text": "python says hi", "from": "python", "topic": "chat"}]
