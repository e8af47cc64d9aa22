"""Single peer connection mode (``/rtc/v1``), the SDKs' default, beside two-PC ``/rtc``."""

from __future__ import annotations

import asyncio
import base64
import gzip
import re
from contextlib import AsyncExitStack
from functools import partial

import aiohttp
import pytest
from livekit import rtc
from livekit.protocol import rtc as proto

from tests.e2e.harness import ServerProcess, make_token
from tests.e2e.raw import join_request_param
from tests.e2e.sdk import EventLog, connect, joined, wait_until, watching
from tests.e2e.test_media import (
    SAMPLE_RATE,
    TONE_HZ,
    dominant_frequency,
    hear,
    publishing_tone,
)

pytestmark = pytest.mark.sdk

TWO_PCS = rtc.RoomOptions(single_peer_connection=False)


def _is_publication(sid: str, item: tuple[rtc.Track, rtc.RemoteTrackPublication, object]) -> bool:
    return item[1].sid == sid


def _mode_of(server: ServerProcess, identity: str) -> str:
    pattern = rf"participant joined: {identity} \(PA_\w+, ([a-z ]+)\)"
    found: list[str] = re.findall(pattern, server.logs())
    assert found, f"{identity} never joined"
    return found[-1]


async def _hears_tone(track: rtc.Track) -> None:
    tail = (await hear(track, 1.0))[SAMPLE_RATE // 2 :]
    assert abs(dominant_frequency(tail, SAMPLE_RATE) - TONE_HZ) < 15


async def test_sdk_default_is_one_peer_connection_and_talks_to_two_pc_clients(
    server: ServerProcess,
) -> None:
    """The Python SDK's default (single PC) and its two-PC fallback in one room, both ways."""
    async with (
        watching(server, "single", "modes", "track_subscribed") as (single, single_log),
        watching(server, "dual", "modes", "track_subscribed", options=TWO_PCS) as (dual, dual_log),
    ):
        assert _mode_of(server, "single") == "one peer connection"
        assert _mode_of(server, "dual") == "two peer connections"
        async with publishing_tone(single), publishing_tone(dual):
            to_dual, _, sender = await dual_log["track_subscribed"].wait_for()
            assert sender.identity == "single"
            to_single, _, sender = await single_log["track_subscribed"].wait_for()
            assert sender.identity == "dual"
            await asyncio.gather(_hears_tone(to_dual), _hears_tone(to_single))


async def test_more_tracks_than_the_client_offered_sections_for(server: ServerProcess) -> None:
    """The SDK offers three receive-only audio sections; five tracks need two more, which the
    server asks for with media_sections_requirement."""
    async with AsyncExitStack() as stack:
        listener, logs = await stack.enter_async_context(
            watching(server, "listener", "many", "track_subscribed")
        )
        band = await stack.enter_async_context(joined(server, "band", "many"))
        for _ in range(5):
            await stack.enter_async_context(publishing_tone(band))
        await wait_until(lambda: len(logs["track_subscribed"].items) >= 5)
        tracks = [track for track, _, _ in logs["track_subscribed"].items]
        assert len({track.sid for track in tracks}) == 5
        for track in tracks:  # one at a time: five decoders at once starve a 2-core machine
            await _hears_tone(track)
        assert len(listener.remote_participants["band"].track_publications) == 5


async def test_unsubscribe_and_subscribe_again(server: ServerProcess) -> None:
    """An unsubscribed track's section goes inactive; subscribing again brings the track back
    (on that section or another)."""
    events = ("track_subscribed", "track_unsubscribed")
    async with (
        joined(server, "radio", "again") as radio,
        watching(server, "tuner", "again", *events) as (tuner, logs),
        publishing_tone(radio) as published,
    ):
        first, publication, _ = await logs["track_subscribed"].wait_for()
        await _hears_tone(first)
        publication.set_subscribed(False)
        await logs["track_unsubscribed"].wait_for()
        publication.set_subscribed(True)
        await logs["track_subscribed"].wait_for(lambda _: len(logs["track_subscribed"].items) > 1)
        second = logs["track_subscribed"].items[-1][0]
        assert second.sid == published.sid
        await _hears_tone(second)
        assert tuner.remote_participants["radio"].track_publications[published.sid].subscribed


async def _get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        cors = response.headers.get("Access-Control-Allow-Origin", "")
        return response.status, await response.text(), cors


async def test_v1_validate_answers_as_livekit(server: ServerProcess) -> None:
    base = f"{server.http_url}/rtc/v1/validate?access_token={make_token('v', 'valid-room')}"
    for gzipped in (True, False):
        status, text, cors = await _get(
            f"{base}&join_request={join_request_param(gzipped=gzipped)}"
        )
        assert (status, text, cors) == (200, "success", "*")
    status, text, _ = await _get(base)
    assert (status, text) == (400, "join_request is required")
    status, text, _ = await _get(f"{base}&join_request=%%%")
    assert status == 400 and "join_request" in text
    bomb = proto.WrappedJoinRequest(
        compression=proto.WrappedJoinRequest.Compression.GZIP,
        join_request=gzip.compress(b"\0" * (2 << 20)),
    )
    encoded = base64.urlsafe_b64encode(bomb.SerializeToString()).decode()
    status, text, _ = await _get(f"{base}&join_request={encoded}")
    assert (status, text) == (400, "join request too large")
    # Metadata in the join request needs the right to set it, as on the token's own path.
    metadata = join_request_param(metadata="mine")
    status, text, _ = await _get(f"{base}&join_request={metadata}")
    assert status == 401 and "canUpdateOwnMetadata" in text


async def test_v1_unknown_room_is_the_exact_404_clients_look_for(
    start: object,
) -> None:
    """livekit-client falls back to two PCs on any 404 of the v1 path except this text."""
    server = start("room:\n  auto_create: false\n")  # type: ignore[operator]
    token = make_token("v", "nowhere")
    url = f"{server.http_url}/rtc/v1/validate?access_token={token}"
    url += f"&join_request={join_request_param()}"
    status, text, _ = await _get(url)
    assert (status, text) == (404, "requested room does not exist")


async def test_join_request_metadata_and_attributes_apply(server: ServerProcess) -> None:
    """A single-PC join's metadata and attributes replace and extend the token's, for a
    participant allowed to set them (what the SDKs send from their connect options)."""
    token = make_token("meta", "meta-room", can_update_own_metadata=True)
    join = join_request_param(metadata="from-join", attributes={"k": "v", "skip": ""})
    async with (
        joined(server, "observer", "meta-room") as observer,
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.ws_url}/rtc/v1?access_token={token}&join_request={join}") as ws,
    ):
        first = proto.SignalResponse()
        first.ParseFromString((await ws.receive()).data)
        assert first.WhichOneof("message") == "join"
        me = first.join.participant
        assert (me.metadata, dict(me.attributes)) == ("from-join", {"k": "v"})
        assert not first.join.subscriber_primary
        await asyncio.sleep(0.2)
        seen = observer.remote_participants["meta"]
        assert (seen.metadata, dict(seen.attributes)) == ("from-join", {"k": "v"})


async def test_two_pc_client_still_gets_offers_from_the_server(server: ServerProcess) -> None:
    """``/rtc`` without a join request keeps the server-offering subscriber PC."""
    participant = await connect(server, "old", "old-room", options=TWO_PCS)
    try:
        subscribed = EventLog(participant, "track_subscribed")
        async with joined(server, "new", "old-room") as new, publishing_tone(new):
            track, _, _ = await subscribed.wait_for()
            await _hears_tone(track)
        assert _mode_of(server, "old") == "two peer connections"
    finally:
        await participant.disconnect()


async def test_two_pc_subscriber_hears_tracks_that_come_and_go(server: ServerProcess) -> None:
    """On two PCs the server offers; the m= line of a track that went is recycled for the
    next one once its stop was answered (the SDP does not grow with every track ever
    published). The SDK takes each recycled line as a new track."""
    async with (
        watching(server, "steady", "recycle", "track_subscribed", options=TWO_PCS) as (_, logs),
        joined(server, "coming-and-going", "recycle") as publisher,
    ):
        subscribed = logs["track_subscribed"]
        for _ in range(3):
            async with publishing_tone(publisher) as publication:
                track, _, _ = await subscribed.wait_for(partial(_is_publication, publication.sid))
                await _hears_tone(track)
            await publisher.local_participant.unpublish_track(publication.sid)
            await asyncio.sleep(1.0)  # the stop is offered and answered before the next round
        assert len(logs["track_subscribed"].items) == 3
