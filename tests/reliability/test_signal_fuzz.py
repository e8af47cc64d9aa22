"""Seeded fuzzing of signal frames: truncated, bit-flipped and oversized protobuf and JSON
versions of real requests. A bad frame may end its own session, nothing else."""

from __future__ import annotations

import asyncio
import json
import random
import time

import aiohttp
from google.protobuf import json_format
from livekit.protocol import models
from livekit.protocol import rtc as proto

from tests.e2e.harness import ServerProcess, make_token
from tests.reliability.conftest import media_keeps_flowing

SEED = 14
FRAMES = 240
FRAMES_PER_CONNECTION = 2

_SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


def _requests() -> list[proto.SignalRequest]:
    """One valid-looking request of each kind a client sends."""
    candidate = json.dumps({"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"})
    return [
        proto.SignalRequest(offer=proto.SessionDescription(type="offer", sdp=_SDP, id=1)),
        proto.SignalRequest(answer=proto.SessionDescription(type="answer", sdp=_SDP, id=1)),
        proto.SignalRequest(trickle=proto.TrickleRequest(candidateInit=candidate)),
        proto.SignalRequest(
            add_track=proto.AddTrackRequest(cid="c", name="cam", type=models.TrackType.VIDEO)
        ),
        proto.SignalRequest(mute=proto.MuteTrackRequest(sid="TR_x", muted=True)),
        proto.SignalRequest(subscription=proto.UpdateSubscription(track_sids=["TR_x"])),
        proto.SignalRequest(track_setting=proto.UpdateTrackSettings(track_sids=["TR_x"])),
        proto.SignalRequest(update_metadata=proto.UpdateParticipantMetadata(metadata="m")),
        proto.SignalRequest(ping_req=proto.Ping(timestamp=1, rtt=2)),
        proto.SignalRequest(
            leave=proto.LeaveRequest(reason=models.DisconnectReason.UNKNOWN_REASON)
        ),
        proto.SignalRequest(
            subscription_permission=proto.SubscriptionPermission(all_participants=True)
        ),
    ]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    match rng.randrange(5):
        case 0:  # truncated
            return data[: rng.randrange(max(1, len(data)))]
        case 1:  # bits flipped
            flipped = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                index = rng.randrange(len(flipped))
                flipped[index] ^= 1 << rng.randrange(8)
            return bytes(flipped)
        case 2:  # random bytes spliced in
            at = rng.randrange(len(data) + 1)
            return data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:]
        case 3:  # oversized: past limit.signal_message_size_limit (2 MiB)
            return data + b"\x00" * (2 * 1024 * 1024 + 1)
        case _:
            return rng.randbytes(rng.randint(0, 300))


def _frames(rng: random.Random) -> list[tuple[bool, bytes]]:
    """(as text, payload) frames: protobuf and protojson, each mutated."""
    frames = []
    requests = _requests()
    for _ in range(FRAMES):
        request = rng.choice(requests)
        if rng.random() < 0.5:
            frames.append((False, _mutate(rng, request.SerializeToString())))
        else:
            text = json_format.MessageToJson(request).encode()
            frames.append((True, _mutate(rng, text)))
    return frames


async def _send(
    http: aiohttp.ClientSession,
    server: ServerProcess,
    identity: str,
    room: str,
    batch: list[tuple[bool, bytes]],
) -> None:
    token = make_token(identity, room)
    async with http.ws_connect(
        f"{server.ws_url}/rtc?access_token={token}&protocol=15", max_msg_size=0
    ) as ws:
        for as_text, payload in batch:
            if ws.closed:
                return
            try:
                if as_text:
                    await ws.send_str(payload.decode(errors="replace"))
                else:
                    await ws.send_bytes(payload)
            except ConnectionError:
                return
        await asyncio.sleep(0.05)


async def test_fuzzed_signal_frames_end_only_their_own_sessions(server: ServerProcess) -> None:
    rng = random.Random(SEED)
    frames = _frames(rng)
    room = "signal-fuzz"
    async with media_keeps_flowing(server, room) as victim, aiohttp.ClientSession() as http:
        since = time.monotonic()
        for start in range(0, len(frames), FRAMES_PER_CONNECTION):
            batch = frames[start : start + FRAMES_PER_CONNECTION]
            await _send(http, server, f"fuzz-{start}", room, batch)
        # The server still answers a well-formed client, in the attacked room too.
        token = make_token("after", room)
        async with http.ws_connect(f"{server.ws_url}/rtc?access_token={token}") as ws:
            first = proto.SignalResponse()
            first.ParseFromString(await ws.receive_bytes(timeout=10))
            assert first.WhichOneof("message") == "join"
        victim.assert_unharmed(since)
