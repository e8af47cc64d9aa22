"""Media between real SDK participants: a tone published by one is heard by the others."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc

from tests.e2e.conftest import assert_clean_exit
from tests.e2e.harness import ServerProcess, make_token, start_server
from tests.e2e.sdk import EventLog, Hearing, connect, joined, watching

pytestmark = pytest.mark.sdk


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Every media test runs against the server on uvloop and on asyncio's own loop."""
    args = ("--no-uvloop",) if request.param == "asyncio" else ()
    proc = start_server(tmp_path_factory.mktemp("server"), args=args)
    yield proc
    assert_clean_exit(proc)


SAMPLE_RATE = 48000
TONE_HZ = 440.0


@asynccontextmanager
async def running(coroutine: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run ``coroutine`` in the background for as long as the block runs."""
    task = asyncio.get_running_loop().create_task(coroutine)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def publishing_tone(room: rtc.Room) -> AsyncIterator[rtc.LocalTrackPublication]:
    """Publish a 440 Hz sine as a microphone track for as long as the block runs."""
    source = rtc.AudioSource(SAMPLE_RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("tone", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    publication = await room.local_participant.publish_track(track, options)

    async def feed() -> None:
        samples = SAMPLE_RATE // 100  # 10 ms frames
        phase = 0
        while True:
            frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, samples)
            data = frame.data
            for index in range(samples):
                value = math.sin(2 * math.pi * TONE_HZ * (phase + index) / SAMPLE_RATE)
                data[index] = int(value * 12000)
            phase += samples
            await source.capture_frame(frame)

    async with running(feed()):
        yield publication


@dataclass
class Listening:
    listener: rtc.Room
    hearing: Hearing


@asynccontextmanager
async def listening(
    server: ServerProcess, room: str, options: rtc.RoomOptions | None = None
) -> AsyncIterator[Listening]:
    """A speaker's tone heard by a listener (joined with ``options``) for as long as the
    block runs; afterwards the listener must be the same participant, and nobody must have
    seen it leave."""
    speaker = await connect(server, "speaker", room)
    listener = rtc.Room()
    subscribed = EventLog(listener, "track_subscribed")
    left = EventLog(speaker, "participant_disconnected")
    token = make_token("listener", room)
    await asyncio.wait_for(listener.connect(server.ws_url, token, options or rtc.RoomOptions()), 20)
    try:
        async with publishing_tone(speaker):
            track, _, _ = await subscribed.wait_for()
            hearing = Hearing(track)
            sid = listener.local_participant.sid
            try:
                yield Listening(listener, hearing)
            finally:
                await hearing.close()
            assert listener.local_participant.sid == sid, "the same participant"
            assert not left.items, "nobody saw the listener leave"
    finally:
        await listener.disconnect()
        await speaker.disconnect()


def dominant_frequency(samples: list[int], rate: int) -> float:
    """Frequency from zero crossings: enough to tell a 440 Hz tone from noise or silence."""
    crossings = sum(1 for a, b in itertools.pairwise(samples) if a < 0 <= b)
    return crossings * rate / len(samples)


async def hear(track: rtc.Track, seconds: float) -> list[int]:
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
    collected: list[int] = []
    try:
        async with asyncio.timeout(seconds + 10):
            async for event in stream:
                collected.extend(event.frame.data)
                if len(collected) >= seconds * SAMPLE_RATE:
                    break
    finally:
        await stream.aclose()
    return collected


async def test_tone_reaches_subscribers_including_a_late_joiner(server: ServerProcess) -> None:
    async with joined(server, "speaker", "audio") as speaker:
        listener = rtc.Room()
        subscribed = EventLog(listener, "track_subscribed")
        await asyncio.wait_for(listener.connect(server.ws_url, _token("listener", "audio")), 15)
        try:
            async with publishing_tone(speaker) as publication:
                assert publication.sid.startswith("TR_")
                track, _, participant = await subscribed.wait_for()
                assert participant.identity == "speaker"
                samples = await hear(track, 1.0)
                tail = samples[len(samples) // 2 :]  # past the decoder's start-up
                assert abs(dominant_frequency(tail, SAMPLE_RATE) - TONE_HZ) < 15
                # A participant joining after the track was published gets it at once.
                late = rtc.Room()
                late_subscribed = EventLog(late, "track_subscribed")
                await asyncio.wait_for(late.connect(server.ws_url, _token("late", "audio")), 15)
                try:
                    late_track, _, _ = await late_subscribed.wait_for()
                    late_tail = (await hear(late_track, 1.0))[SAMPLE_RATE // 2 :]
                    assert abs(dominant_frequency(late_tail, SAMPLE_RATE) - TONE_HZ) < 15
                finally:
                    await late.disconnect()
        finally:
            await listener.disconnect()


def _token(identity: str, room: str) -> str:
    from tests.e2e.harness import make_token

    return make_token(identity, room)


WIDTH, HEIGHT = 320, 240
COLOUR = (200, 40, 90)  # RGB, far from any codec's grey


@asynccontextmanager
async def publishing_colour(
    room: rtc.Room,
    codec: rtc.VideoCodec.ValueType = rtc.VideoCodec.VP8,
    simulcast: bool = False,
    size: tuple[int, int] = (WIDTH, HEIGHT),
) -> AsyncIterator[rtc.LocalTrackPublication]:
    """Publish a solid-colour camera track (320x240) at 15 fps for as long as the block runs."""
    width, height = size
    source = rtc.VideoSource(width, height)
    track = rtc.LocalVideoTrack.create_video_track("colour", source)
    options = rtc.TrackPublishOptions(
        source=rtc.TrackSource.SOURCE_CAMERA, simulcast=simulcast, video_codec=codec
    )
    publication = await room.local_participant.publish_track(track, options)
    pixel = bytes((*COLOUR, 255))

    async def feed() -> None:
        while True:
            frame = rtc.VideoFrame(
                width, height, rtc.VideoBufferType.RGBA, pixel * (width * height)
            )
            source.capture_frame(frame)
            await asyncio.sleep(1 / 15)

    async with running(feed()):
        yield publication


async def first_frames(track: rtc.Track, count: int) -> list[rtc.VideoFrame]:
    stream = rtc.VideoStream(track, format=rtc.VideoBufferType.RGBA)
    frames: list[rtc.VideoFrame] = []
    try:
        async with asyncio.timeout(15):
            async for event in stream:
                frames.append(event.frame)
                if len(frames) >= count:
                    break
    finally:
        await stream.aclose()
    return frames


def centre_colour(frame: rtc.VideoFrame) -> tuple[int, int, int]:
    data = bytes(frame.data)
    offset = 4 * (frame.height // 2 * frame.width + frame.width // 2)
    return data[offset], data[offset + 1], data[offset + 2]


@pytest.mark.parametrize("codec", ["VP8", "H264", "VP9", "AV1"])
async def test_video_reaches_subscribers_with_size_and_colour(
    server: ServerProcess, codec: str
) -> None:
    room = f"video-{codec}"
    async with joined(server, "camera", room) as camera:
        async with publishing_colour(camera, rtc.VideoCodec.Value(codec)):
            # Joins seconds after the publisher's first keyframe: needs a keyframe request.
            await asyncio.sleep(2)
            viewer = rtc.Room()
            subscribed = EventLog(viewer, "track_subscribed")
            await asyncio.wait_for(viewer.connect(server.ws_url, _token("viewer", room)), 15)
            try:
                track, remote, participant = await subscribed.wait_for()
                assert participant.identity == "camera"
                assert remote.mime_type.lower() == f"video/{codec}".lower()
                frames = await first_frames(track, 10)
                last = frames[-1]
                assert (last.width, last.height) == (WIDTH, HEIGHT)
                for got, want in zip(centre_colour(last), COLOUR, strict=True):
                    assert abs(got - want) < 16, (centre_colour(last), COLOUR)
            finally:
                await viewer.disconnect()


async def test_pure_python_fan_out_forwards_video_and_audio(tmp_path: Path) -> None:
    """The fallback for installs without the C module (sfu/fanout.py) against real clients:
    CI always builds the C fan-out, so this is where the Python one meets libwebrtc."""
    pure = start_server(tmp_path, extra_env={"LIVEKIT_PY_PURE_FANOUT": "1"})
    try:
        assert "forwarding: pure-Python fan-out" in pure.logs()
        async with (
            joined(pure, "camera", "pure") as camera,
            watching(pure, "viewer", "pure", "track_subscribed") as (_, logs),
            publishing_colour(camera),
            publishing_tone(camera),
        ):
            tracks = {}
            for _ in range(2):
                track, _, _ = await logs["track_subscribed"].wait_for(
                    lambda e: e[0].kind not in tracks
                )
                tracks[track.kind] = track
            frames = await first_frames(tracks[rtc.TrackKind.KIND_VIDEO], 5)
            for got, want in zip(centre_colour(frames[-1]), COLOUR, strict=True):
                assert abs(got - want) < 16
            tail = (await hear(tracks[rtc.TrackKind.KIND_AUDIO], 1.0))[SAMPLE_RATE // 2 :]
            assert abs(dominant_frequency(tail, SAMPLE_RATE) - TONE_HZ) < 15
    finally:
        assert_clean_exit(pure)


async def test_mute_unmute_and_unpublish_reach_subscribers(server: ServerProcess) -> None:
    events = ("track_muted", "track_unmuted", "track_unpublished", "track_subscribed")
    async with (
        joined(server, "muter", "mute") as muter,
        watching(server, "watcher", "mute", *events) as (_, logs),
        publishing_tone(muter) as publication,
    ):
        await logs["track_subscribed"].wait_for()
        local_track = publication.track
        assert local_track is not None
        local_track.mute()
        await logs["track_muted"].wait_for(lambda e: e[1].sid == publication.sid)
        local_track.unmute()
        await logs["track_unmuted"].wait_for(lambda e: e[1].sid == publication.sid)
        await muter.local_participant.unpublish_track(publication.sid)
        gone = await logs["track_unpublished"].wait_for()
        assert gone[0].sid == publication.sid


async def test_manual_subscription_without_auto_subscribe(server: ServerProcess) -> None:
    manual = rtc.RoomOptions(auto_subscribe=False)
    events = ("track_published", "track_subscribed")
    async with (
        joined(server, "radio", "manual") as radio,
        watching(server, "tuner", "manual", *events, options=manual) as (_, logs),
        publishing_tone(radio),
    ):
        publication, _ = await logs["track_published"].wait_for()
        await asyncio.sleep(0.5)
        assert not logs["track_subscribed"].items, "auto_subscribe=false must not subscribe"
        publication.set_subscribed(True)
        track, _, _ = await logs["track_subscribed"].wait_for()
        tail = (await hear(track, 1.0))[SAMPLE_RATE // 2 :]
        assert abs(dominant_frequency(tail, SAMPLE_RATE) - TONE_HZ) < 15


class FrameCounter:
    """Counts decoded frames of one subscriber's video stream in the background."""

    def __init__(self, track: rtc.Track) -> None:
        self.count = 0
        self._stream = rtc.VideoStream(track)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for _ in self._stream:
            self.count += 1

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._stream.aclose()


async def test_one_publisher_ten_subscribers_miss_no_frames(server: ServerProcess) -> None:
    async with joined(server, "caster", "fanout") as caster:
        viewers: list[rtc.Room] = []
        logs: list[EventLog] = []
        counters: list[FrameCounter] = []
        try:
            for index in range(10):
                viewer = rtc.Room()
                logs.append(EventLog(viewer, "track_subscribed"))
                token = _token(f"viewer{index}", "fanout")
                await asyncio.wait_for(viewer.connect(server.ws_url, token), 15)
                viewers.append(viewer)
            async with publishing_colour(caster) as publication:
                for log in logs:
                    track, _, _ = await log.wait_for()
                    counters.append(FrameCounter(track))
                await asyncio.wait_for(_all_flowing(counters), 15)
                start = [c.count for c in counters]
                sent_before = await _frames_sent(publication)
                await asyncio.sleep(10)
                sent = await _frames_sent(publication) - sent_before
                received = [c.count - s for c, s in zip(counters, start, strict=True)]
                assert sent > 100, sent
                for got in received:
                    # Edges of the window may differ by a frame or two; 2 % may be lost.
                    assert got >= sent * 0.98 - 2, (got, sent, received)
        finally:
            for counter in counters:
                await counter.close()
            for viewer in viewers:
                await viewer.disconnect()


async def _all_flowing(counters: list[FrameCounter]) -> None:
    while not all(c.count > 0 for c in counters):  # noqa: ASYNC110 - frames have no event
        await asyncio.sleep(0.05)


async def _frames_sent(publication: rtc.LocalTrackPublication) -> int:
    """Frames the publisher's encoder sent, from libwebrtc's outbound-rtp stats."""
    track = publication.track
    assert track is not None
    stats = await track.get_stats()
    return sum(s.outbound_rtp.outbound.frames_sent for s in stats if s.HasField("outbound_rtp"))


async def test_publisher_bitrate_ramps_up_with_our_feedback(server: ServerProcess) -> None:
    """Receiver Reports and REMB from the server let the publisher's encoder leave its start
    bitrate (without feedback libwebrtc stays near it)."""
    width, height = 640, 360
    frames = [os.urandom(width * height * 4) for _ in range(6)]  # noise: hard to compress
    async with joined(server, "noisy", "ramp") as noisy, joined(server, "sink", "ramp"):
        source = rtc.VideoSource(width, height)
        track = rtc.LocalVideoTrack.create_video_track("noise", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False)
        # Lift the SDK's per-resolution cap (800 kbps at 360p) so only feedback limits it.
        options.video_encoding.max_bitrate = 4_000_000
        options.video_encoding.max_framerate = 15
        publication = await noisy.local_participant.publish_track(track, options)

        async def feed() -> None:
            index = 0
            while True:
                frame = rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, frames[index % 6])
                source.capture_frame(frame)
                index += 1
                await asyncio.sleep(1 / 15)

        async with running(feed()):
            await asyncio.sleep(0.5)
            early = await _target_bitrate(publication)
            await asyncio.sleep(9.5)
            late = await _target_bitrate(publication)
            # libwebrtc starts near 300-700 kbps; with REMB from us it reaches the cap within
            # seconds, without feedback it creeps up by about 8 % a second.
            assert late >= 2_500_000, (early, late)


async def _target_bitrate(publication: rtc.LocalTrackPublication) -> float:
    track = publication.track
    assert track is not None
    stats = await track.get_stats()
    return max(
        (s.outbound_rtp.outbound.target_bitrate for s in stats if s.HasField("outbound_rtp")),
        default=0.0,
    )


async def test_nack_recovers_packets_dropped_both_ways(start: Callable[..., ServerProcess]) -> None:
    """The transport drops every 25th RTP packet from the publisher and to the subscriber; our
    NACKs (the SDK's publisher retransmits on its media SSRC: it offers no RTX for published
    video) and our packet cache (answering the subscriber's NACKs) keep the frames coming."""
    server = start(extra_env={"LKPY_TEST_DROP_EVERY": "25"})
    async with joined(server, "lossy-cam", "nack") as camera:
        viewer = rtc.Room()
        subscribed = EventLog(viewer, "track_subscribed")
        await asyncio.wait_for(viewer.connect(server.ws_url, _token("lossy-eye", "nack")), 15)
        counter: FrameCounter | None = None
        try:
            async with publishing_colour(camera) as publication:
                track, _, _ = await subscribed.wait_for()
                counter = FrameCounter(track)
                await asyncio.wait_for(_all_flowing([counter]), 15)
                start_count, sent_before = counter.count, await _frames_sent(publication)
                await asyncio.sleep(6)
                received = counter.count - start_count
                sent = await _frames_sent(publication) - sent_before
                assert received >= sent * 0.95 - 2, (received, sent)
                local = publication.track
                assert local is not None
                outbound = [
                    s.outbound_rtp for s in await local.get_stats() if s.HasField("outbound_rtp")
                ]
                assert sum(o.outbound.nack_count for o in outbound) > 0
                assert sum(o.outbound.retransmitted_packets_sent for o in outbound) > 0
                inbound = [
                    s.inbound_rtp for s in await track.get_stats() if s.HasField("inbound_rtp")
                ]
                assert sum(i.inbound.nack_count for i in inbound) > 0
        finally:
            if counter is not None:
                await counter.close()
            await viewer.disconnect()


async def test_subscription_permissions_from_the_publisher(server: ServerProcess) -> None:
    from livekit.rtc._proto.track_pb2 import ParticipantTrackPermission

    async with joined(server, "owner", "perm-media") as owner:
        owner.local_participant.set_track_subscription_permissions(
            allow_all_participants=False,
            participant_permissions=[
                ParticipantTrackPermission(participant_identity="friend", allow_all=True)
            ],
        )
        rooms = {name: rtc.Room() for name in ("friend", "stranger")}
        logs = {name: EventLog(room, "track_subscribed") for name, room in rooms.items()}
        for name, room in rooms.items():
            await asyncio.wait_for(room.connect(server.ws_url, _token(name, "perm-media")), 15)
        try:
            async with publishing_tone(owner):
                await logs["friend"].wait_for()
                await asyncio.sleep(1)
                assert not logs["stranger"].items, "not allowed, so not subscribed"
                owner.local_participant.set_track_subscription_permissions(
                    allow_all_participants=True
                )
                track, _, _ = await logs["stranger"].wait_for()
                tail = (await hear(track, 1.0))[SAMPLE_RATE // 2 :]
                assert abs(dominant_frequency(tail, SAMPLE_RATE) - TONE_HZ) < 15
        finally:
            for room in rooms.values():
                await room.disconnect()


async def test_simulcast_publisher_is_forwarded_one_layer(server: ServerProcess) -> None:
    """Layer selection is not implemented yet, but a simulcast publisher (the SDK's default,
    rid-based) must still reach subscribers: one layer is adopted by its mid."""
    async with (
        joined(server, "multi", "simulcast") as multi,
        publishing_colour(multi, simulcast=True, size=(1280, 720)),  # three layers
        watching(server, "single", "simulcast", "track_subscribed") as (_, logs),
    ):
        track, _, _ = await logs["track_subscribed"].wait_for()
        frames = await first_frames(track, 10)
        for got, want in zip(centre_colour(frames[-1]), COLOUR, strict=True):
            assert abs(got - want) < 16
