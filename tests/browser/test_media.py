"""Media between livekit-client in Chromium and the Python SDK, with each client's defaults."""

from __future__ import annotations

import asyncio
from typing import Any

from livekit import rtc

from tests.browser.conftest import Pages
from tests.browser.driver import COLOUR, TONE_HZ, VIDEO_SIZE
from tests.e2e.harness import ServerProcess
from tests.e2e.sdk import watching
from tests.e2e.test_media import (
    COLOUR as SDK_COLOUR,
)
from tests.e2e.test_media import (
    SAMPLE_RATE,
    centre_colour,
    dominant_frequency,
    first_frames,
    hear,
    publishing_colour,
    publishing_tone,
)

#: The layers livekit-client's default simulcast makes of a 640x360 camera (h180 and the
#: original, ``computeVideoEncodings``).
SIMULCAST_SIZES = {(320, 180), VIDEO_SIZE}


def close_to(got: tuple[int, ...] | list[int], want: tuple[int, ...], within: int = 24) -> bool:
    return all(abs(g - w) < within for g, w in zip(got, want, strict=True))


async def test_browser_camera_and_microphone_reach_the_python_sdk(
    server: ServerProcess, pages: Pages
) -> None:
    async with watching(server, "python", "browser-publishes", "track_subscribed") as (_, logs):
        page = await pages.join("chromium", "browser-publishes")
        local = await page.lk("enableCameraAndMicrophone")
        sources = {t["source"] for t in local["tracks"]}
        assert sources == {"camera", "microphone"}, local
        camera = next(t for t in local["tracks"] if t["source"] == "camera")
        assert camera["simulcasted"], "livekit-client publishes cameras with simulcast"

        subscribed: dict[str, Any] = {}
        for _ in range(2):
            track, publication, participant = await logs["track_subscribed"].wait_for(
                lambda item: item[1].sid not in subscribed
            )
            assert participant.identity == "chromium"
            subscribed[publication.sid] = (track, publication)
        by_kind = {t.kind: (t, p) for t, p in subscribed.values()}

        audio, audio_pub = by_kind[rtc.TrackKind.KIND_AUDIO]
        assert audio_pub.source == rtc.TrackSource.SOURCE_MICROPHONE
        samples = await hear(audio, 2.0)
        tail = samples[SAMPLE_RATE:]  # past the decoder's and the browser's start-up
        assert abs(dominant_frequency(tail, SAMPLE_RATE) - TONE_HZ) < 15

        video, video_pub = by_kind[rtc.TrackKind.KIND_VIDEO]
        assert video_pub.source == rtc.TrackSource.SOURCE_CAMERA
        frames = await first_frames(video, 30)
        last = frames[-1]
        assert (last.width, last.height) in SIMULCAST_SIZES, (last.width, last.height)
        assert close_to(centre_colour(last), COLOUR), centre_colour(last)


async def test_python_sdk_media_reaches_the_browser(server: ServerProcess, pages: Pages) -> None:
    async with (
        watching(server, "python", "browser-subscribes") as (python, _),
        publishing_tone(python),
        publishing_colour(python),
    ):
        page = await pages.join("chromium", "browser-subscribes")

        def flowing(stats: list[dict[str, Any]]) -> bool:
            video = [s for s in stats if s["kind"] == "video" and s["framesDecoded"] > 10]
            audio = [s for s in stats if s["kind"] == "audio" and s["totalAudioEnergy"] > 0]
            return bool(video) and bool(audio)

        stats = await page.wait_for("inbound", flowing, "python")
        video = next(s for s in stats if s["kind"] == "video")
        assert (video["frameWidth"], video["frameHeight"]) == (320, 240)
        assert all(s["bytesReceived"] > 0 for s in stats)
        shown = await page.wait_for(
            "centreColour", lambda c: c is not None, "python", "camera", within_s=10
        )
        assert close_to(shown["rgb"], SDK_COLOUR), shown
        await asyncio.sleep(0)
