"""Oversized fields from one participant are refused, never broadcast (issue 14, finding 1 and
3): 1.5 MB track names, 1.9 MB metadata, a 900,000-character name, 50,000 attributes, and a
client that never reads while others update."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from livekit import api
from livekit.protocol import models
from livekit.protocol import rtc as proto

from tests.e2e.harness import API_KEY, API_SECRET, ServerProcess, make_token
from tests.reliability.conftest import media_keeps_flowing


async def _open(
    http: aiohttp.ClientSession, server: ServerProcess, identity: str, room: str
) -> aiohttp.ClientWebSocketResponse:
    token = make_token(identity, room, can_update_own_metadata=True)
    ws = await http.ws_connect(f"{server.ws_url}/rtc?access_token={token}&protocol=15")
    first = proto.SignalResponse()
    first.ParseFromString(await ws.receive_bytes(timeout=10))
    assert first.WhichOneof("message") == "join"
    return ws


async def _responses(
    ws: aiohttp.ClientWebSocketResponse, count: int
) -> list[proto.RequestResponse]:
    found: list[proto.RequestResponse] = []
    while len(found) < count:
        response = proto.SignalResponse()
        response.ParseFromString(await ws.receive_bytes(timeout=10))
        if response.WhichOneof("message") == "request_response":
            found.append(response.request_response)
    return found


async def test_oversized_fields_are_refused_and_never_broadcast(server: ServerProcess) -> None:
    room = "oversized"
    async with media_keeps_flowing(server, room) as victim, aiohttp.ClientSession() as http:
        since = time.monotonic()
        attacker = await _open(http, server, "attacker", room)
        for index in range(12):
            request = proto.AddTrackRequest(
                cid=f"c{index}", name="n" * 1_500_000, type=models.TrackType.VIDEO
            )
            await attacker.send_bytes(proto.SignalRequest(add_track=request).SerializeToString())
        refused = await _responses(attacker, 12)
        assert {r.reason for r in refused} == {proto.RequestResponse.LIMIT_EXCEEDED}
        updates = [
            proto.UpdateParticipantMetadata(metadata="m" * 1_900_000, request_id=1),
            proto.UpdateParticipantMetadata(name="x" * 900_000, request_id=2),
            proto.UpdateParticipantMetadata(
                attributes={f"k{i}": "v" for i in range(50_000)}, request_id=3
            ),
        ]
        for update in updates:
            frame = proto.SignalRequest(update_metadata=update).SerializeToString()
            await attacker.send_bytes(frame)
        answers = await _responses(attacker, 3)
        assert [a.reason for a in answers] == [proto.RequestResponse.LIMIT_EXCEEDED] * 3
        assert [a.request_id for a in answers] == [1, 2, 3]
        assert "name length" in answers[1].message
        async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lkapi:
            listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        info = next(p for p in listed.participants if p.identity == "attacker")
        assert not info.tracks and not info.metadata and not info.name and not info.attributes
        assert info.ByteSize() < 4096
        await attacker.close()
        victim.assert_unharmed(since)


async def test_a_client_that_never_reads_is_cut_off(server: ServerProcess) -> None:
    room = "never-reads"
    async with media_keeps_flowing(server, room) as victim, aiohttp.ClientSession() as http:
        since = time.monotonic()
        sleeper = await _open(http, server, "sleeper", room)  # never reads again
        writer = await _open(http, server, "writer", room)
        big = "m" * 500_000  # under the 512 KiB limit: accepted, broadcast to everyone
        for index in range(120):
            update = proto.UpdateParticipantMetadata(metadata=f"{index}{big}", request_id=index)
            frame = proto.SignalRequest(update_metadata=update).SerializeToString()
            await writer.send_bytes(frame)
            await asyncio.sleep(0.01)

        async def sleeper_gone() -> bool:
            async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lkapi:
                listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
            return "sleeper" not in {p.identity for p in listed.participants}

        deadline = time.monotonic() + 45
        while not await sleeper_gone():
            assert time.monotonic() < deadline, "the client that never reads is still there"
            await asyncio.sleep(0.5)
        # Cut off by whichever comes first: the queue bound, the write timeout, the WebSocket
        # heartbeat it no longer answers, or the subscriber offer it never answers.
        reasons = (
            "is not reading",
            "took no data",
            "No PONG received",
            "subscriber negotiation failed",
        )
        assert any(reason in server.logs() for reason in reasons)
        await writer.close()
        await sleeper.close()
        victim.assert_unharmed(since)
