"""Simulcast with livekit-client in Chromium (issue 16): adaptive stream picks the layer that
fits the video element, and dynacast stops the browser's encoder for a layer nobody wants."""

from __future__ import annotations

import asyncio
from typing import Any

from livekit import rtc

from tests.browser.conftest import Pages
from tests.e2e.harness import ServerProcess
from tests.e2e.sdk import watching
from tests.e2e.test_simulcast import LOW, WIDTH, publishing_camera


def _video_width(stats: list[dict[str, Any]]) -> int:
    videos = [s for s in stats if s["kind"] == "video" and s["framesDecoded"] > 0]
    return int(videos[0]["frameWidth"]) if videos else 0


async def test_adaptive_stream_fits_the_layer_to_the_video_element(
    server: ServerProcess, pages: Pages
) -> None:
    async with (
        watching(server, "python", "adaptive") as (python, _),
        publishing_camera(python),
    ):
        page = await pages.join("chromium", "adaptive")
        await page.wait_for("remotes", lambda r: bool(r and r[0]["tracks"]))
        await page.wait_for("resizeVideo", bool, "python", "camera", 160, 90)
        small = await page.wait_for("inbound", lambda s: 0 < _video_width(s) <= 360, "python")
        assert _video_width(small) <= 360
        await page.lk("resizeVideo", "python", "camera", WIDTH, 720)
        large = await page.wait_for(
            "inbound", lambda s: _video_width(s) == WIDTH, "python", within_s=20
        )
        assert _video_width(large) == WIDTH


async def test_dynacast_stops_the_browser_layer_nobody_wants(
    server: ServerProcess, pages: Pages
) -> None:
    async with watching(server, "python", "browser-dynacast", "track_subscribed") as (_, logs):
        page = await pages.join("chromium", "browser-dynacast")
        await page.lk("setCamera", True)
        _, publication, _ = await logs["track_subscribed"].wait_for()
        assert publication.simulcasted

        async def encoding(seconds: float) -> set[str]:
            before = {s["rid"]: s["framesEncoded"] for s in await page.lk("outbound")}
            await asyncio.sleep(seconds)
            after = {s["rid"]: s["framesEncoded"] for s in await page.lk("outbound")}
            return {rid for rid, count in after.items() if count > before.get(rid, 0)}

        layers = await encoding(1.0)
        assert len(layers) == 2, layers  # livekit-client's two layers of a 640x360 camera
        publication.set_video_quality(LOW)
        await asyncio.sleep(6)  # LiveKit lowers the publisher's layers after 5 s
        assert await encoding(1.5) == {"q"}
        publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_HIGH)
        await asyncio.sleep(1)
        assert await encoding(1.5) == layers


async def test_scalable_vp9_sends_a_small_element_only_the_base_layer(pages: Pages) -> None:
    """livekit-client sends VP9 as one L3T3_KEY stream (libwebrtc makes two spatial layers of
    a 640x360 camera, 320x180 and 640x360); a subscriber whose element is small gets the base
    layer only, and every layer once the element grows."""
    sender = await pages.join("sender", "browser-svc", publishDefaults={"videoCodec": "vp9"})
    viewer = await pages.join("viewer", "browser-svc")
    await sender.lk("setCamera", True)
    await viewer.wait_for("resizeVideo", bool, "sender", "camera", 160, 90, within_s=20)
    small = await viewer.wait_for("inbound", lambda s: 0 < _video_width(s) < 640, "sender")
    assert _video_width(small) == 320, small
    await viewer.lk("resizeVideo", "sender", "camera", 640, 360)
    large = await viewer.wait_for("inbound", lambda s: _video_width(s) == 640, "sender")
    assert _video_width(large) == 640
