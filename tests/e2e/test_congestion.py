"""Congestion control with the official SDK (issue 18): one subscriber's link is limited with
``tc`` (an HTB token bucket) inside the test namespace; that subscriber's video steps down, a
track is paused when nothing else fits, and everything comes back when the limit is lifted,
while a subscriber on an unlimited link keeps the top layer throughout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from livekit import rtc

from tests.e2e.harness import IN_NETNS, ServerProcess, make_token, start_server
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

#: 4:3, so the SDK's simulcast layers are 240x180 (100 kbps), 480x360 (225 kbps) and the full
#: 640x480; noise makes the encoder use what each layer may.
WIDTH, HEIGHT = 640, 480
FPS = 10
TOP = WIDTH


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    config = "rtc:\n  congestion_control:\n    allow_pause: true\n"
    process = start_server(tmp_path, config)
    yield process
    process.stop()
    assert "Traceback" not in process.logs(), process.logs()


@asynccontextmanager
async def publishing_noise(room: rtc.Room, name: str) -> AsyncIterator[None]:
    source = rtc.VideoSource(WIDTH, HEIGHT)
    track = rtc.LocalVideoTrack.create_video_track(name, source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=True)
    await room.local_participant.publish_track(track, options)
    frames = [bytearray(os.urandom(WIDTH * HEIGHT * 4)) for _ in range(4)]

    async def feed() -> None:
        index = 0
        while True:
            frame = rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGBA, frames[index % 4])
            source.capture_frame(frame)
            index += 1
            await asyncio.sleep(1 / FPS)

    async with running(feed()):
        yield


class Viewer:
    """A subscriber decoding both tracks."""

    def __init__(self, room: rtc.Room) -> None:
        self.room = room
        self.decoded: dict[str, Decoded] = {}

    def widths(self) -> list[int]:
        return [self.decoded[name].width for name in sorted(self.decoded)]

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
def limited(port: int) -> Iterator[Callable[[str], None]]:
    """Traffic to ``port`` shaped to 600 kbit/s on the loopback device (an HTB token bucket
    with a 20-packet queue: this kernel has HTB but not tbf or netem); yields a function that
    changes the rate."""
    commands = [
        "tc qdisc add dev lo root handle 1: htb default 10",
        "tc class add dev lo parent 1: classid 1:10 htb rate 10gbit",
        "tc class add dev lo parent 1: classid 1:20 htb rate 600kbit ceil 600kbit",
        "tc qdisc add dev lo parent 1:20 handle 20: pfifo limit 20",
        "tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip protocol 17 0xff "
        f"match ip dport {port} 0xffff flowid 1:20",
    ]
    for command in commands:
        subprocess.run(command.split(), check=True)

    def rate(value: str) -> None:
        change = f"tc class change dev lo parent 1: classid 1:20 htb rate {value} ceil {value}"
        subprocess.run(change.split(), check=True)

    try:
        yield rate
    finally:
        subprocess.run("tc qdisc del dev lo root".split(), check=True)


async def test_a_limited_subscriber_steps_down_pauses_and_recovers(server: ServerProcess) -> None:
    publisher = rtc.Room()
    await publisher.connect(server.ws_url, make_token("camera", "cc"))
    viewers: list[Viewer] = []
    try:
        async with publishing_noise(publisher, "a"), publishing_noise(publisher, "b"):
            free, slow = await watch(server, "free"), await watch(server, "slow")
            viewers += [free, slow]
            await wait_until(lambda: free.widths() == slow.widths() == [TOP, TOP], 30)
            top_since = time.monotonic()
            with limited(await slow.port()) as rate:
                start = time.monotonic()
                await wait_until(lambda: max(slow.widths()) < TOP, 5)
                print(f"stepped down in {time.monotonic() - start:.1f} s to {slow.widths()}")
                await asyncio.sleep(4)
                before = await slow.loss()
                await asyncio.sleep(5)
                after = await slow.loss()
                received, lost = after[0] - before[0], after[1] - before[1]
                assert received > 0 and lost / (received + lost) < 0.02, (received, lost)
                rate("150kbit")
                await wait_until(lambda: "paused for bandwidth" in server.logs(), 15)
                await asyncio.sleep(3)
                now = time.monotonic()
                await asyncio.sleep(3)
                flowing = [n for n in ("a", "b") if slow.frames_since(n, now) > 0]
                assert len(flowing) == 1, slow.widths()
                assert free.widths() == [TOP, TOP]
                lifted = time.monotonic()
            # The limit is lifted (the qdisc is gone).
            await wait_until(lambda: slow.widths() == [TOP, TOP], 15)
            print(f"recovered in {time.monotonic() - lifted:.1f} s")
            assert "resumed for bandwidth" in server.logs()
            for decoded in free.decoded.values():
                widths = {w for t, w in decoded.frames if t >= top_since}
                assert widths == {TOP}, "the unlimited subscriber kept the top layer throughout"
    finally:
        for viewer in viewers:
            await viewer.close()
        await publisher.disconnect()
