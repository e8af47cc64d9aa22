"""Congestion control with livekit-client in Chromium (issue 18): the browser's downlink is
limited with ``tc`` (HTB) inside the test namespace. Chromium's transport-cc feedback makes the
server step its camera down, pause it at 150 kbit/s (livekit-client reports the track PAUSED)
and bring it back when the limit is lifted; the screen share, first by priority, plays on."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
from livekit import rtc

from tests.browser.conftest import Pages
from tests.e2e.conftest import assert_clean_exit
from tests.e2e.harness import IN_NETNS, ServerProcess, make_token, start_server
from tests.e2e.test_congestion import LIMIT_BPS, TOP, limited, publishing

pytestmark = pytest.mark.skipif(
    not IN_NETNS or shutil.which("tc") is None,
    reason="needs the test network namespace and tc (tests/run.sh sets both up)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = "rtc:\n  congestion_control:\n    allow_pause: true\n"
    proc = start_server(tmp_path_factory.mktemp("server"), config)
    yield proc
    assert_clean_exit(proc)


QUEUE_S = 1  # the limited link's queue, in seconds at its rate (as a home router's)


def _camera(stats: list[dict[str, Any]]) -> dict[str, Any]:
    found = [s for s in stats if s["source"] == "camera" and s["kind"] == "video"]
    return found[0] if found else {"frameWidth": 0, "bytesReceived": 0, "framesDecoded": 0}


def _stream_states(events: list[dict[str, Any]]) -> list[str]:
    return [e["state"] for e in events if e["type"] == "streamState" and e["source"] == "camera"]


async def test_the_browser_steps_down_is_told_of_the_pause_and_recovers(
    server: ServerProcess, pages: Pages
) -> None:
    publisher = rtc.Room()
    await publisher.connect(server.ws_url, make_token("sharer", "browser-cc"))
    try:
        async with publishing(publisher):
            # Layers by bandwidth only: not by the size of the page's video element.
            page = await pages.join("viewer", "browser-cc", adaptiveStream=False)
            await page.wait_for(
                "inbound", lambda s: _camera(s)["frameWidth"] == TOP, "sharer", within_s=60
            )
            deadline = time.monotonic() + 40
            while True:  # the publisher's encoder ramps up to the top layer's bitrate
                before = _camera(await page.lk("inbound", "sharer"))["bytesReceived"]
                await asyncio.sleep(3)  # one second may be a keyframe
                after = _camera(await page.lk("inbound", "sharer"))["bytesReceived"]
                if (after - before) * 8 / 3 > 2 * LIMIT_BPS:
                    break
                assert time.monotonic() < deadline, "the publisher never sent enough to limit"
            port = await page.lk("mediaPort")
            assert port, "no media port"
            with limited(port) as rate:
                # The step down is decided within about a second (the queue filling), but the
                # lower layer's keyframe then waits behind up to a second of queued top layer.
                await page.wait_for(
                    "inbound", lambda s: 0 < _camera(s)["frameWidth"] < TOP, "sharer", within_s=10
                )
                rate("150kbit", 150_000 * QUEUE_S // 8)
                events = await page.wait_for(
                    "events", lambda e: "paused" in _stream_states(e), within_s=20
                )
                assert "paused" in _stream_states(events)
                # Frames sent before the pause may still be in the second of queue: let it drain.
                await asyncio.sleep(QUEUE_S + 0.5)
                frames = _camera(await page.lk("inbound", "sharer"))["framesDecoded"]
                await asyncio.sleep(2)
                assert _camera(await page.lk("inbound", "sharer"))["framesDecoded"] - frames < 3
            await page.wait_for(
                "inbound", lambda s: _camera(s)["frameWidth"] == TOP, "sharer", within_s=15
            )
            assert _stream_states(await page.lk("events"))[-1] == "active"
    finally:
        await publisher.disconnect()
