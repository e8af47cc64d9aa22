"""Congestion control with the official SDK (issue 18): one subscriber's link is limited with
``tc`` (an HTB token bucket) inside the test namespace; that subscriber's video steps down, a
track is paused when nothing else fits, and everything comes back when the limit is lifted,
while a subscriber on an unlimited link keeps the top layer throughout."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import av
import pytest
from livekit import rtc
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import IN_NETNS, ServerProcess, free_port, make_token, start_server
from tests.e2e.sdk import EventLog, wait_until
from tests.e2e.test_media import running
from tests.e2e.test_simulcast import Decoded

pytestmark = [
    pytest.mark.sdk,
    pytest.mark.skipif(
        not IN_NETNS or shutil.which("tc") is None,
        reason="needs the test network namespace and tc (tests/run.sh sets both up)",
    ),
]

#: The camera is 4:3, so the SDK's simulcast layers are 240x180 (up to 100 kbps), 480x360 (225
#: kbps) and the full 960x720 (1.5 Mbps).
WIDTH, HEIGHT = 960, 720
SCREEN_SIZE = (480, 360)
SCREEN_BPS = 60_000
#: The first limit (the second is 150 kbit/s).
LIMIT_BPS = 600_000
FPS = 10
TOP = WIDTH


METRICS_PORT = free_port()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    config = "rtc:\n  congestion_control:\n    allow_pause: true\nlogging:\n  level: debug\n"
    process = start_server(tmp_path, config + f"prometheus_port: {METRICS_PORT}\n")
    yield process
    process.stop()
    assert "Traceback" not in process.logs(), process.logs()


def _frames(width: int, height: int, count: int) -> list[bytearray]:
    """A clip with what camera video has: detail everywhere that keeps changing without
    being noise (FFmpeg's Mandelbrot zoom), played forwards then backwards so it loops
    without a cut. Pure noise would make libwebrtc scale the top layer down."""
    graph = av.filter.Graph()
    source = graph.add("mandelbrot", f"size={width}x{height}:rate={FPS}")
    rgba = graph.add("format", "pix_fmts=rgba")
    sink = graph.add("buffersink")
    source.link_to(rgba)
    rgba.link_to(sink)
    graph.configure()
    pulled = [sink.pull() for _ in range(count)]
    frames = [bytearray(frame.to_ndarray().tobytes()) for frame in pulled]  # type: ignore[attr-defined]
    return frames + frames[-2:0:-1]


@asynccontextmanager
async def publishing_clip(
    room: rtc.Room, name: str, options: rtc.TrackPublishOptions, width: int, height: int
) -> AsyncIterator[None]:
    source = rtc.VideoSource(width, height)
    track = rtc.LocalVideoTrack.create_video_track(name, source)
    await room.local_participant.publish_track(track, options)
    frames = _frames(width, height, 3 * FPS)

    async def feed() -> None:
        index = 0
        while True:
            frame = frames[index % len(frames)]
            source.capture_frame(rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, frame))
            index += 1
            await asyncio.sleep(1 / FPS)

    async with running(feed()):
        yield


@asynccontextmanager
async def publishing(room: rtc.Room) -> AsyncIterator[None]:
    """A screen share ("a": one small layer, 60 kbps, first by priority) and a simulcast camera
    ("b")."""
    screen = rtc.TrackPublishOptions(
        source=rtc.TrackSource.SOURCE_SCREENSHARE,
        simulcast=False,
        video_encoding=rtc.VideoEncoding(max_bitrate=SCREEN_BPS, max_framerate=FPS),
    )
    camera = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=True)
    async with (
        publishing_clip(room, "a", screen, *SCREEN_SIZE),
        publishing_clip(room, "b", camera, WIDTH, HEIGHT),
    ):
        yield


class Viewer:
    """A subscriber decoding both tracks."""

    def __init__(self, room: rtc.Room) -> None:
        self.room = room
        self.decoded: dict[str, Decoded] = {}

    def widths(self) -> list[int]:
        return [self.decoded[name].width for name in sorted(self.decoded)]

    def steady(self, widths: list[int], seconds: float) -> bool:
        """Whether every frame of the last ``seconds`` had ``widths`` (track by track)."""
        since = time.monotonic() - seconds
        for name, width in zip(sorted(self.decoded), widths, strict=True):
            frames = self.decoded[name].frames
            if not frames or frames[0][0] > since:
                return False
            if any(w != width for t, w in frames if t >= since):
                return False
        return True

    def frames_since(self, name: str, since: float) -> int:
        return sum(1 for t, _ in self.decoded[name].frames if t >= since)

    async def port(self) -> int:
        """The UDP port the server sends this subscriber's media to."""
        stats = await self.room.get_rtc_stats()
        for group in (stats.publisher_stats, stats.subscriber_stats):
            kinds = {s.WhichOneof("stats"): s for s in group}
            if "inbound_rtp" not in kinds:
                continue
            pair = next(
                s.candidate_pair.candidate_pair
                for s in group
                if s.WhichOneof("stats") == "candidate_pair"
                and s.candidate_pair.candidate_pair.nominated
            )
            for s in group:
                if s.WhichOneof("stats") != "local_candidate":
                    continue
                if s.local_candidate.rtc.id == pair.local_candidate_id:
                    return int(s.local_candidate.candidate.port)
        raise AssertionError("no selected candidate pair")

    async def received_bytes(self) -> int:
        stats = await self.room.get_rtc_stats()
        return sum(
            s.inbound_rtp.inbound.bytes_received
            for s in [*stats.publisher_stats, *stats.subscriber_stats]
            if s.WhichOneof("stats") == "inbound_rtp" and s.inbound_rtp.stream.kind == "video"
        )

    async def bitrate(self, seconds: float = 3.0) -> float:
        """bps of video it receives, over a few seconds (one second may be a keyframe)."""
        before = await self.received_bytes()
        await asyncio.sleep(seconds)
        return (await self.received_bytes() - before) * 8.0 / seconds

    async def loss(self) -> tuple[int, int]:
        """(packets received, packets lost) of its video so far."""
        stats = await self.room.get_rtc_stats()
        received = lost = 0
        for s in [*stats.publisher_stats, *stats.subscriber_stats]:
            if s.WhichOneof("stats") == "inbound_rtp" and s.inbound_rtp.stream.kind == "video":
                received += s.inbound_rtp.received.packets_received
                lost += s.inbound_rtp.received.packets_lost
        return received, lost

    async def close(self) -> None:
        for decoded in self.decoded.values():
            await decoded.close()
        await self.room.disconnect()


async def watch(server: ServerProcess, identity: str) -> Viewer:
    room = rtc.Room()
    subscribed = EventLog(room, "track_subscribed")
    await asyncio.wait_for(room.connect(server.ws_url, make_token(identity, "cc")), 15)
    viewer = Viewer(room)
    for _ in range(2):
        track, publication, _ = await subscribed.wait_for(
            lambda e: e[1].name not in viewer.decoded, within_s=20
        )
        viewer.decoded[publication.name] = Decoded(track)
    return viewer


@contextlib.contextmanager
def limited(port: int) -> Iterator[Callable[[str, int], None]]:
    """Traffic to ``port`` shaped to 600 kbit/s on the loopback device (an HTB token bucket
    with a queue of about a second: this kernel has HTB but not tbf or netem); yields a
    function that changes the rate and queue."""
    commands = [
        "tc qdisc add dev lo root handle 1: htb default 10",
        "tc class add dev lo parent 1: classid 1:10 htb rate 10gbit",
        "tc class add dev lo parent 1: classid 1:20 htb rate 600kbit ceil 600kbit",
        "tc qdisc add dev lo parent 1:20 handle 20: bfifo limit 75000",
        "tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip protocol 17 0xff "
        f"match ip dport {port} 0xffff flowid 1:20",
    ]
    for command in commands:
        subprocess.run(command.split(), check=True)

    def rate(value: str, queue: int) -> None:
        change = f"tc class change dev lo parent 1: classid 1:20 htb rate {value} ceil {value}"
        subprocess.run(change.split(), check=True)
        # A queue of about a second at that rate, as a home router's would be.
        resize = f"tc qdisc change dev lo parent 1:20 handle 20: bfifo limit {queue}"
        subprocess.run(resize.split(), check=True)

    try:
        yield rate
    finally:
        subprocess.run("tc qdisc del dev lo root".split(), check=True)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def only_the_screen_plays(viewer: Viewer, within_s: float) -> bool:
    """Whether, in some 3-second window within ``within_s``, the screen share got frames and
    the camera none."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        start = time.monotonic()
        await asyncio.sleep(3)
        if viewer.frames_since("a", start) > 0 and viewer.frames_since("b", start) == 0:
            return True
    return False


async def test_a_limited_subscriber_steps_down_pauses_and_recovers(server: ServerProcess) -> None:
    publisher = rtc.Room()
    await publisher.connect(server.ws_url, make_token("sharer", "cc"))
    viewers: list[Viewer] = []
    try:
        async with publishing(publisher):
            free, slow = await watch(server, "free"), await watch(server, "slow")
            viewers += [free, slow]
            tops = [SCREEN_SIZE[0], TOP]
            # The publisher's own estimate ramps up first: its top layer comes and goes until
            # its encoder has the bitrate for it.
            await wait_until(lambda: free.steady(tops, 5) and slow.steady(tops, 5), 60)
            # ... and its encoder takes a while more to use the top layer's bitrate: the limit
            # must be well below what flows.
            deadline = time.monotonic() + 40
            while await slow.bitrate() < 2 * LIMIT_BPS:
                assert time.monotonic() < deadline, "the publisher never sent enough to limit"
            top_since = time.monotonic()
            with limited(await slow.port()) as rate:
                limited_at = time.monotonic()
                # Decided within about a second (the queue filling), but the lower layer's
                # keyframe then waits behind up to a second of queued top layer.
                await wait_until(lambda: slow.decoded["b"].width < TOP, 10)
                print(f"stepped down in {time.monotonic() - limited_at:.1f} s")
                await asyncio.sleep(4)
                before = await slow.loss()
                await asyncio.sleep(5)
                after = await slow.loss()
                received, lost = after[0] - before[0], after[1] - before[1]
                assert received > 0 and lost / (received + lost) < 0.02, (received, lost)
                print(f"loss after adapting: {lost} of {received + lost}")
                rate("150kbit", 19000)
                await wait_until(lambda: "paused for bandwidth" in server.logs(), 15)
                # The camera is paused; the screen share, first by priority, still plays.
                assert await only_the_screen_plays(slow, within_s=20), slow.widths()
                lifted = time.monotonic()
            # The limit is lifted (the qdisc is gone).
            await wait_until(lambda: slow.widths() == tops, 15)
            print(f"recovered in {time.monotonic() - lifted:.1f} s")
            assert "resumed for bandwidth" in server.logs()
            metrics = scrape(METRICS_PORT)
            assert metrics["livekit_congestion_pauses_total"] >= 1
            assert metrics["livekit_padding_bytes_total"] > 0, "it probed"
            for decoded in free.decoded.values():
                widths = {w for t, w in decoded.frames if t >= top_since}
                assert len(widths) == 1, "the unlimited subscriber kept the top layer throughout"
    finally:
        for viewer in viewers:
            await viewer.close()
        await publisher.disconnect()
