"""Media between livekit-client in Chromium and the Python SDK, with each client's defaults."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
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
        # livekit-client's default: one peer connection through /rtc/v1, with no fallback.
        assert "/rtc/v1?" in page.joined["url"], page.joined
        assert f"chromium ({page.joined['sid']}, one peer connection)" in server.logs()
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


async def test_mute_unmute_unpublish_and_screen_share(server: ServerProcess, pages: Pages) -> None:
    events = ("track_muted", "track_unmuted", "track_unpublished", "track_subscribed")
    async with watching(server, "python", "browser-controls", *events) as (python, logs):
        page = await pages.join("chromium", "browser-controls")
        await page.lk("enableCameraAndMicrophone")
        await logs["track_subscribed"].wait_for(
            lambda i: i[1].source == rtc.TrackSource.SOURCE_CAMERA
        )

        await page.lk("setMicrophone", False)
        muted = await logs["track_muted"].wait_for()
        assert muted[1].source == rtc.TrackSource.SOURCE_MICROPHONE
        await page.lk("setMicrophone", True)
        unmuted = await logs["track_unmuted"].wait_for()
        assert unmuted[1].source == rtc.TrackSource.SOURCE_MICROPHONE

        await page.lk("unpublish", "camera")
        gone = await logs["track_unpublished"].wait_for()
        assert gone[0].source == rtc.TrackSource.SOURCE_CAMERA
        remaining = python.remote_participants["chromium"].track_publications.values()
        assert [p.source for p in remaining] == [rtc.TrackSource.SOURCE_MICROPHONE]

        local = await page.lk("screenShare", True)
        assert "screen_share" in {t["source"] for t in local["tracks"]}
        track, publication, _ = await logs["track_subscribed"].wait_for(
            lambda i: i[1].source == rtc.TrackSource.SOURCE_SCREENSHARE
        )
        frames = await first_frames(track, 5)
        assert frames[-1].width > 0 and frames[-1].height > 0
        await page.lk("screenShare", False)
        await logs["track_unpublished"].wait_for(lambda i: i[0].sid == publication.sid)


async def test_python_mute_reaches_the_browser(server: ServerProcess, pages: Pages) -> None:
    async with (
        watching(server, "python", "python-mutes") as (python, _),
        publishing_tone(python) as publication,
    ):
        page = await pages.join("chromium", "python-mutes")
        await page.wait_for("remotes", lambda r: bool(r and r[0]["tracks"]))
        track = publication.track
        assert track is not None
        track.mute()
        await page.wait_for(
            "events",
            lambda e: any(x["type"] == "trackMuted" and x["identity"] == "python" for x in e),
        )
        track.unmute()
        await page.wait_for(
            "events",
            lambda e: any(x["type"] == "trackUnmuted" and x["identity"] == "python" for x in e),
        )


async def test_two_browsers_see_each_others_video(server: ServerProcess, pages: Pages) -> None:
    """One browser on livekit-client's default single peer connection, the other on two (its
    fallback when a server has no /rtc/v1), in one room."""
    first = await pages.join("first", "two-browsers")
    second = await pages.join("second", "two-browsers", singlePeerConnection=False)
    assert "/rtc/v1?" in first.joined["url"] and "/rtc?" in second.joined["url"]
    await first.lk("setCamera", True)
    await second.lk("setCamera", True)
    for page, other in ((first, "second"), (second, "first")):

        def decoding(stats: list[dict[str, Any]]) -> bool:
            return any(s["kind"] == "video" and s["framesDecoded"] > 10 for s in stats)

        stats = await page.wait_for("inbound", decoding, other, within_s=30)
        video = next(s for s in stats if s["kind"] == "video")
        assert (video["frameWidth"], video["frameHeight"]) in SIMULCAST_SIZES
        shown = await page.wait_for("centreColour", lambda c: c is not None, other, "camera")
        assert close_to(shown["rgb"], COLOUR), shown


@pytest.mark.parametrize("codec", ["vp8", "h264", "vp9", "av1"])
async def test_browser_camera_in_each_codec_reaches_the_python_sdk(
    server: ServerProcess, pages: Pages, codec: str
) -> None:
    """livekit-client simulcasts VP8 and H.264 and sends VP9 and AV1 as one scalable (SVC)
    stream; every subscriber must get decodable video either way."""
    room = f"browser-{codec}"
    async with watching(server, "python", room, "track_subscribed") as (_, logs):
        page = await pages.join("chromium", room, publishDefaults={"videoCodec": codec})
        await page.lk("setCamera", True)
        track, publication, _ = await logs["track_subscribed"].wait_for()
        assert publication.mime_type.lower() == f"video/{codec}"
        frames = await first_frames(track, 10)
        last = frames[-1]
        assert (last.width, last.height) in SIMULCAST_SIZES, (last.width, last.height)
        assert close_to(centre_colour(last), COLOUR), centre_colour(last)
