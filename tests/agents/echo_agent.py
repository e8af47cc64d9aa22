"""A livekit-agents worker with a trivial entrypoint, for tests/e2e/test_agents.py.

It runs in its own virtual environment (``.venv-agents``, made by tests/run.sh: livekit-agents
pins its own ``livekit``), connects to ``LIVEKIT_URL`` as any deployment would, and for each job
joins the room, answers the RPC method ``ping`` and plays back the first audio it hears. It
prints one ``AGENT ...`` line per step for the test to follow. The agent name comes from
``ECHO_AGENT_NAME`` (empty: automatic dispatch).

Its load is reported as a constant, ``ECHO_AGENT_LOAD`` (0.1 unless set): the default is the
machine's CPU use, and a busy test machine above LiveKit's 0.7 target would get no jobs.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from livekit import rtc
from livekit.agents import AgentServer, JobContext

SAMPLE_RATE = 48000


def say(text: str) -> None:
    print(f"AGENT {text}", flush=True)


async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    room = ctx.room
    say(f"joined {room.name} as {room.local_participant.identity}")

    def pong(data: Any) -> str:
        return f"pong {data.payload}"

    room.local_participant.register_rpc_method("ping", pong)
    source = rtc.AudioSource(SAMPLE_RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("echo", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    await room.local_participant.publish_track(track, options)
    echoing: list[asyncio.Task[None]] = []

    async def echo(remote: rtc.Track) -> None:
        stream = rtc.AudioStream(remote, sample_rate=SAMPLE_RATE, num_channels=1)
        async for event in stream:
            await source.capture_frame(event.frame)

    def on_track(remote: rtc.Track, *_: Any) -> None:
        if remote.kind == rtc.TrackKind.KIND_AUDIO and not echoing:
            say(f"echoing {remote.sid}")
            echoing.append(asyncio.get_running_loop().create_task(echo(remote)))

    room.on("track_subscribed", on_track)
    say(f"ready in {room.name}")  # the RPC method is registered and the echo track published
    for participant in room.remote_participants.values():
        for publication in participant.track_publications.values():
            if publication.track is not None:
                on_track(publication.track)

    async def ended(reason: str = "") -> None:
        say(f"job ended in {room.name}")

    ctx.add_shutdown_callback(ended)


def main() -> None:
    server = AgentServer(
        load_fnc=lambda: float(os.environ.get("ECHO_AGENT_LOAD", "0.1")),
        num_idle_processes=int(os.environ.get("ECHO_AGENT_IDLE_PROCESSES", "0")),
        port=0,
    )
    server.rtc_session(entrypoint, agent_name=os.environ.get("ECHO_AGENT_NAME", ""))
    # Production mode, as deployed: a worker over its 0.7 load threshold reports itself FULL.
    asyncio.run(server.run(devmode=False))


if __name__ == "__main__":
    main()
