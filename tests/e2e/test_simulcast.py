"""Simulcast with the official SDK: each subscriber decodes the layer it asks for, switches
without freezing, and falls back when the publisher's layer stops (issue 16)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from livekit import rtc

from tests.e2e.harness import ServerProcess, make_token
from tests.e2e.netfilter import needs_nftables, rtp_stream_dropped
from tests.e2e.sdk import EventLog, connect, joined, wait_until
from tests.e2e.test_media import running

pytestmark = pytest.mark.sdk

WIDTH, HEIGHT = 1280, 720
LOW, MEDIUM, HIGH = (
    rtc.VideoQuality.VIDEO_QUALITY_LOW,
    rtc.VideoQuality.VIDEO_QUALITY_MEDIUM,
    rtc.VideoQuality.VIDEO_QUALITY_HIGH,
)


@asynccontextmanager
async def publishing_camera(
    room: rtc.Room, scalability_mode: str = ""
) -> AsyncIterator[rtc.LocalTrackPublication]:
    """A 1280x720 camera at 15 fps, simulcast as the SDK makes it (180p, 360p, 720p), or one
    VP9 stream in ``scalability_mode``, with a bar moving across so every frame carries
    something to encode."""
    source = rtc.VideoSource(WIDTH, HEIGHT)
    track = rtc.LocalVideoTrack.create_video_track("camera", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=True)
    if scalability_mode:
        options.video_codec = rtc.VideoCodec.VP9
        options.scalability_mode = scalability_mode
    publication = await room.local_participant.publish_track(track, options)
    background = bytearray(bytes((30, 120, 200, 255)) * (WIDTH * HEIGHT))
    bar = bytes((250, 250, 250, 255)) * 40

    async def feed() -> None:
        index = 0
        while True:
            frame = bytearray(background)
            column = (index * 16) % (WIDTH - 40)
            for row in range(0, HEIGHT, 2):
                start = 4 * (row * WIDTH + column)
                frame[start : start + len(bar)] = bar
            source.capture_frame(rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGBA, frame))
            index += 1
            await asyncio.sleep(1 / 15)

    async with running(feed()):
        yield publication


class Decoded:
    """Width and arrival time of every frame one subscriber decodes."""

    def __init__(self, track: rtc.Track) -> None:
        self.frames: list[tuple[float, int]] = []
        self._stream = rtc.VideoStream(track)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for event in self._stream:
            self.frames.append((time.monotonic(), event.frame.width))

    @property
    def width(self) -> int:
        return self.frames[-1][1] if self.frames else 0

    def longest_gap(self, since: float) -> float:
        times = [since, *(t for t, _ in self.frames if t >= since), time.monotonic()]
        return max(b - a for a, b in itertools.pairwise(times))

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._stream.aclose()


@asynccontextmanager
async def viewing(
    server: ServerProcess, identity: str, room: str
) -> AsyncIterator[tuple[rtc.RemoteTrackPublication, Decoded]]:
    viewer = rtc.Room()
    subscribed = EventLog(viewer, "track_subscribed")
    await asyncio.wait_for(viewer.connect(server.ws_url, make_token(identity, room)), 15)
    decoded: Decoded | None = None
    try:
        track, publication, _ = await subscribed.wait_for()
        decoded = Decoded(track)
        yield publication, decoded
    finally:
        if decoded is not None:
            await decoded.close()
        await viewer.disconnect()


async def test_subscribers_decode_the_layer_they_ask_for_and_switch_without_freezing(
    server: ServerProcess,
) -> None:
    room = "simulcast-quality"
    async with (
        joined(server, "camera", room) as camera,
        publishing_camera(camera),
        viewing(server, "small", room) as (small_publication, small),
        viewing(server, "large", room) as (large_publication, large),
    ):
        assert small_publication.simulcasted, "TrackInfo says simulcast: the SDK may choose"
        small_publication.set_video_quality(LOW)
        large_publication.set_video_quality(HIGH)
        await wait_until(lambda: 0 < small.width <= 360 and large.width == WIDTH, 20)
        for small_quality, large_quality in ((HIGH, LOW), (LOW, HIGH)):
            switched_at = time.monotonic()
            small_publication.set_video_quality(small_quality)
            large_publication.set_video_quality(large_quality)
            small_wants, large_wants = small_quality == HIGH, large_quality == HIGH
            await wait_until(lambda: (small.width == WIDTH) == small_wants, 10)  # noqa: B023
            await wait_until(lambda: (large.width == WIDTH) == large_wants, 10)  # noqa: B023
            await asyncio.sleep(1)
            for decoded in (small, large):
                gap = decoded.longest_gap(switched_at)
                assert gap < 0.5, f"a frame gap of {gap:.2f} s around the switch"
    assert "Traceback" not in server.logs()


@needs_nftables
async def test_a_layer_that_stops_makes_its_subscribers_fall_back(server: ServerProcess) -> None:
    room = "simulcast-fallback"
    async with (
        joined(server, "camera", room) as camera,
        publishing_camera(camera) as publication,
        viewing(server, "viewer", room) as (_, decoded),
    ):
        await wait_until(lambda: decoded.width == WIDTH, 20)
        local = publication.track
        assert local is not None
        streams = [s for s in await local.get_stats() if s.HasField("outbound_rtp")]
        top = next(s.outbound_rtp for s in streams if s.outbound_rtp.outbound.rid == "f")
        with rtp_stream_dropped(server.udp_port, top.stream.ssrc):
            stopped_at = time.monotonic()
            await wait_until(lambda: 0 < decoded.width < WIDTH, 5)
            fallback = time.monotonic() - stopped_at
            # Within a second of the layer stopping, plus the test's polling.
            assert fallback < 1.2, f"fell back after {fallback:.2f} s"
            await asyncio.sleep(2)
            assert decoded.longest_gap(stopped_at + fallback) < 0.5
        # The layer comes back, and the subscriber with it.
        await wait_until(lambda: decoded.width == WIDTH, 10)


async def _frames_encoded_by_rid(publication: rtc.LocalTrackPublication) -> dict[str, int]:
    track = publication.track
    assert track is not None
    return {
        s.outbound_rtp.outbound.rid: s.outbound_rtp.outbound.frames_encoded
        for s in await track.get_stats()
        if s.HasField("outbound_rtp")
    }


async def _encoding(publication: rtc.LocalTrackPublication, seconds: float) -> set[str]:
    """The rids whose encoder produced frames during the next ``seconds``."""
    before = await _frames_encoded_by_rid(publication)
    await asyncio.sleep(seconds)
    after = await _frames_encoded_by_rid(publication)
    return {rid for rid, count in after.items() if count > before.get(rid, 0)}


async def test_dynacast_pauses_the_layers_nobody_wants(server: ServerProcess) -> None:
    room = "simulcast-dynacast"
    camera = await connect(server, "camera", room, options=rtc.RoomOptions(dynacast=True))
    try:
        async with (
            publishing_camera(camera) as camera_publication,
            viewing(server, "viewer", room) as (publication, decoded),
        ):
            await wait_until(lambda: decoded.width == WIDTH, 20)
            assert await _encoding(camera_publication, 1.0) == {"q", "h", "f"}
            publication.set_video_quality(LOW)
            await wait_until(lambda: 0 < decoded.width <= 360, 10)
            # LiveKit lowers the publisher's layers once the wish has held for 5 s.
            await asyncio.sleep(5.5)
            assert await _encoding(camera_publication, 1.5) == {"q"}
            publication.set_video_quality(HIGH)
            await wait_until(lambda: decoded.width == WIDTH, 10)
            assert await _encoding(camera_publication, 1.0) == {"q", "h", "f"}
    finally:
        await camera.disconnect()


async def test_scalable_vp9_sends_a_low_subscriber_only_its_layer(server: ServerProcess) -> None:
    room = "svc-quality"
    async with (
        joined(server, "camera", room) as camera,
        publishing_camera(camera, scalability_mode="L3T3_KEY"),
        viewing(server, "small", room) as (small_publication, small),
        viewing(server, "large", room) as (large_publication, large),
    ):
        assert small_publication.mime_type.lower() == "video/vp9"
        small_publication_quality = LOW
        small_publication.set_video_quality(small_publication_quality)
        await wait_until(lambda: 0 < small.width <= 360 and large.width == WIDTH, 20)
        switched_at = time.monotonic()
        small_publication.set_video_quality(HIGH)
        large_publication.set_video_quality(LOW)
        await wait_until(lambda: small.width == WIDTH and 0 < large.width <= 360, 10)
        await asyncio.sleep(1)
        for decoded in (small, large):
            gap = decoded.longest_gap(switched_at)
            assert gap < 0.5, f"a frame gap of {gap:.2f} s around the switch"
