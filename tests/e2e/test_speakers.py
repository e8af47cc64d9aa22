"""Active speakers and connection quality with the official SDK: the loud participant is
named, the silent one not, and the names follow when they swap (sfu/speakers.py); every
participant hears its own quality and its publishers' (sfu/quality.py)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from livekit import rtc

from tests.e2e.harness import ServerProcess
from tests.e2e.sdk import joined, wait_until, watching
from tests.e2e.test_media import SAMPLE_RATE, TONE_HZ, running

pytestmark = pytest.mark.sdk


class Microphone:
    """A 440 Hz tone whose loudness the test sets (0: digital silence)."""

    def __init__(self) -> None:
        self.amplitude = 0
        samples = SAMPLE_RATE // 100
        self._sine = [math.sin(2 * math.pi * TONE_HZ * i / SAMPLE_RATE) for i in range(samples)]

    @asynccontextmanager
    async def publishing(self, room: rtc.Room) -> AsyncIterator[None]:
        source = rtc.AudioSource(SAMPLE_RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await room.local_participant.publish_track(track, options)

        async def feed() -> None:
            while True:  # 10 ms frames; 440 Hz fits 4.4 periods, close enough for a level
                frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, len(self._sine))
                data = frame.data
                for index, value in enumerate(self._sine):
                    data[index] = int(value * self.amplitude)
                await source.capture_frame(frame)

        async with running(feed()):
            yield


def _names(speakers: list[rtc.Participant]) -> list[str]:
    return [speaker.identity for speaker in speakers]


async def test_active_speakers_name_the_loud_participant_and_follow_a_swap(
    server: ServerProcess,
) -> None:
    room = "speakers"
    alice, bob = Microphone(), Microphone()
    alice.amplitude = 16000
    async with (
        watching(server, "listener", room, "active_speakers_changed", "track_subscribed") as (
            _,
            logs,
        ),
        joined(server, "alice", room) as alice_room,
        joined(server, "bob", room) as bob_room,
        alice.publishing(alice_room),
        bob.publishing(bob_room),
    ):
        # The SDK lists the speakers active in each SpeakersChanged (LiveKit sends changes
        # only), so "follows" means: events name alice and never bob, then after the swap
        # bob, and once alice's smoothed level has faded, never alice again.
        speakers = logs["active_speakers_changed"]
        await speakers.wait_for(lambda s: "alice" in _names(s), within_s=20)
        await asyncio.sleep(2)
        assert not any("bob" in _names(s) for s in speakers.items), speakers.items
        alice.amplitude, bob.amplitude = 0, 16000
        await speakers.wait_for(lambda s: "bob" in _names(s), within_s=10)
        await asyncio.sleep(1.5)  # alice's level fades over a few intervals
        settled = len(speakers.items)
        await asyncio.sleep(3)
        later = [_names(s) for s in speakers.items[settled:]]
        assert not any("alice" in names for names in later), later
        alice.amplitude = 16000  # and back: alice is named again
        back = len(speakers.items)
        await wait_until(lambda: any("alice" in _names(s) for s in speakers.items[back:]), 10)


async def test_connection_quality_reaches_each_participant(server: ServerProcess) -> None:
    room = "quality"
    mic = Microphone()
    mic.amplitude = 8000
    async with (
        watching(server, "listener", room, "connection_quality_changed") as (listener, logs),
        joined(server, "speaker", room) as speaker,
        mic.publishing(speaker),
    ):
        changes = logs["connection_quality_changed"]
        for identity in ("listener", "speaker"):

            def about(event: Any, who: str = identity) -> bool:
                return bool(event[0].identity == who)

            participant, quality = await changes.wait_for(about, within_s=15)
            # A clean loopback link: nothing lost, round trips of a millisecond.
            assert quality == rtc.ConnectionQuality.QUALITY_EXCELLENT, (participant, quality)
        assert listener.local_participant.identity == "listener"
