"""Signaling details checked on the wire, where the SDK hides them."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from livekit.protocol import models
from livekit.protocol import rtc as proto

from tests.e2e.harness import ServerProcess, make_token
from tests.e2e.raw import open_signal


async def test_join_then_offer_with_trickled_candidates(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await open_signal(http, server, "wire", room="wire")
        seen: dict[str, list[proto.SignalResponse]] = {}

        def complete() -> bool:
            trickles = seen.get("trickle")
            return bool(trickles and trickles[-1].trickle.final and "refresh_token" in seen)

        while not complete():
            response = proto.SignalResponse()
            response.ParseFromString(await ws.receive_bytes(timeout=10))
            seen.setdefault(str(response.WhichOneof("message")), []).append(response)
        offer = seen["offer"][0].offer
        assert "m=application" in offer.sdp
        assert offer.type == "offer"
        for response in seen["trickle"]:
            init = json.loads(response.trickle.candidateInit)
            assert set(init) >= {"candidate", "sdpMid", "sdpMLineIndex"}
            assert init["candidate"].startswith("candidate:")
            assert response.trickle.target == proto.SignalTarget.SUBSCRIBER
        assert seen["refresh_token"][0].refresh_token.count(".") == 2
        await ws.close()


async def test_join_response_fields(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        token = make_token("fields", "fields-room", name="Fido", metadata="m")
        ws = await http.ws_connect(f"{server.ws_url}/rtc?access_token={token}&protocol=15")
        response = proto.SignalResponse()
        response.ParseFromString(await ws.receive_bytes(timeout=10))
        join = response.join
        assert join.room.name == "fields-room" and join.room.sid.startswith("RM_")
        assert join.participant.identity == "fields"
        assert (join.participant.name, join.participant.metadata) == ("Fido", "m")
        assert join.participant.sid.startswith("PA_")
        assert (join.ping_interval, join.ping_timeout) == (5, 15)
        assert join.subscriber_primary
        assert join.server_info.protocol == 15
        assert "livekit-py-server" in join.server_info.debug_info
        assert not join.ice_servers
        await ws.close()


async def _add_track(
    server: ServerProcess, identity: str, source: models.TrackSource, **grants: Any
) -> proto.SignalResponse:
    token = make_token(identity, "publish-rights", **grants)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.ws_url}/rtc?access_token={token}&protocol=15")
        request = proto.AddTrackRequest(
            cid="cid-1", name="t", type=models.TrackType.AUDIO, source=source
        )
        await ws.send_bytes(proto.SignalRequest(add_track=request).SerializeToString())
        try:
            while True:
                response = proto.SignalResponse()
                response.ParseFromString(await ws.receive_bytes(timeout=10))
                if response.WhichOneof("message") in ("track_published", "request_response"):
                    return response
        finally:
            await ws.close()


async def test_publish_rights_are_enforced(server: ServerProcess) -> None:
    microphone, camera = models.TrackSource.MICROPHONE, models.TrackSource.CAMERA
    refused = await _add_track(server, "no-publish", microphone, can_publish=False)
    assert refused.request_response.reason == proto.RequestResponse.NOT_ALLOWED
    assert refused.request_response.add_track.cid == "cid-1"
    sources = {"can_publish_sources": ["microphone"]}
    wrong_source = await _add_track(server, "mic-only", camera, **sources)
    assert wrong_source.request_response.reason == proto.RequestResponse.NOT_ALLOWED
    allowed = await _add_track(server, "mic-ok", microphone, **sources)
    assert allowed.track_published.cid == "cid-1"
    assert allowed.track_published.track.sid.startswith("TR_")
