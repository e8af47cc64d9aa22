"""``MoveParticipant`` and ``ForwardParticipant`` through ``livekit-api``, seen by SDK
participants: on one node, and a move between two nodes sharing Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from livekit import api, rtc

from tests.e2e.harness import API_KEY, API_SECRET, ServerProcess
from tests.e2e.sdk import EventLog, connect, wait_until
from tests.e2e.test_cluster import node_id_of, server_api
from tests.e2e.test_media import (
    SAMPLE_RATE,
    TONE_HZ,
    dominant_frequency,
    hear,
    publishing_colour,
    publishing_tone,
)

pytestmark = pytest.mark.sdk


@asynccontextmanager
async def admin_api(
    server: ServerProcess, room: str, destination: str
) -> AsyncIterator[api.LiveKitAPI]:
    """A client whose token may move or forward from ``room`` to ``destination``."""
    grants = api.VideoGrants(room_admin=True, room=room, destination_room=destination)
    token = api.AccessToken(API_KEY, API_SECRET).with_identity("backend").with_grants(grants)
    client = api.LiveKitAPI.with_token(token=str(token.to_jwt()), url=server.http_url)
    try:
        yield client
    finally:
        await client.aclose()


async def hears_tone(track: rtc.Track) -> bool:
    tail = (await hear(track, 1.0))[SAMPLE_RATE // 2 :]
    return abs(dominant_frequency(tail, SAMPLE_RATE) - TONE_HZ) < 15


def subscribed_from(log: EventLog, identity: str) -> asyncio.Future[rtc.Track]:
    async def wait() -> rtc.Track:
        track, _, _ = await log.wait_for(lambda e: e[2].identity == identity)
        return track  # type: ignore[no-any-return]

    return asyncio.ensure_future(wait())


async def rooms_on_two_nodes(
    nodes: Callable[..., ServerProcess], first_room: str, second_room: str
) -> tuple[ServerProcess, ServerProcess]:
    """Two nodes of one cluster, ``first_room`` made on the first and ``second_room`` on the
    second."""
    first, second = nodes(), nodes()
    async with server_api(first) as lk:
        for node, name in ((first, first_room), (second, second_room)):
            await lk.room.create_room(api.CreateRoomRequest(name=name, node_id=node_id_of(node)))
    return first, second


async def remove_copy(server: ServerProcess, room: str, present: set[str]) -> None:
    """Check who ``room`` lists (``present``), then remove the copy of "source" from it."""
    async with admin_api(server, room, "") as lk:
        assert await identities(lk, room) == present
        await lk.room.remove_participant(api.RoomParticipantIdentity(room=room, identity="source"))


async def identities(lk: api.LiveKitAPI, room: str) -> set[str]:
    listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
    return {p.identity for p in listed.participants}


async def test_move_participant_keeps_its_connection_and_media(server: ServerProcess) -> None:
    mover = await connect(server, "mover", "move-from")
    stayer = await connect(server, "stayer", "move-from")
    host = await connect(server, "host", "move-to")
    watcher = await connect(server, "watcher", "move-to")
    moved = EventLog(mover, "moved")
    reconnecting = EventLog(mover, "reconnecting")
    mover_subscribed = EventLog(mover, "track_subscribed")
    watcher_subscribed = EventLog(watcher, "track_subscribed")
    stayer_saw_leave = EventLog(stayer, "participant_disconnected")
    watcher_saw_join = EventLog(watcher, "participant_connected")
    sid = mover.local_participant.sid
    try:
        async with publishing_tone(mover), publishing_tone(host):
            await wait_until(lambda: "mover" in stayer.remote_participants)
            async with admin_api(server, "move-from", "move-to") as lk:
                await lk.room.move_participant(
                    api.MoveParticipantRequest(
                        room="move-from", identity="mover", destination_room="move-to"
                    )
                )
                await moved.wait_for()
                assert mover.name == "move-to"
                await wait_until(lambda: set(mover.remote_participants) == {"host", "watcher"})
                await stayer_saw_leave.wait_for(lambda p: p.identity == "mover")
                await watcher_saw_join.wait_for(lambda p: p.identity == "mover")
                # Media both ways in the new room, over the same connection.
                assert await hears_tone(await subscribed_from(watcher_subscribed, "mover"))
                assert await hears_tone(await subscribed_from(mover_subscribed, "host"))
                assert mover.local_participant.sid == sid
                assert not reconnecting.items, "the move needed no reconnection"
            async with admin_api(server, "move-to", "") as lk:
                assert await identities(lk, "move-to") == {"mover", "host", "watcher"}
            async with admin_api(server, "move-from", "") as lk:
                assert await identities(lk, "move-from") == {"stayer"}
    finally:
        for participant in (mover, stayer, host, watcher):
            await participant.disconnect()


async def test_move_participant_refusals(server: ServerProcess) -> None:
    member = await connect(server, "member", "move-refusals")
    try:
        async with admin_api(server, "move-refusals", "elsewhere") as lk:
            cases = [
                ("move-refusals", "nobody", "elsewhere", "not_found"),
                ("move-refusals", "member", "not-granted", "unauthenticated"),
            ]
            for room, identity, destination, code in cases:
                with pytest.raises(api.TwirpError) as caught:
                    await lk.room.move_participant(
                        api.MoveParticipantRequest(
                            room=room, identity=identity, destination_room=destination
                        )
                    )
                assert caught.value.code == code
        async with admin_api(server, "move-refusals", "move-refusals") as lk:
            with pytest.raises(api.TwirpError) as caught:
                await lk.room.move_participant(
                    api.MoveParticipantRequest(
                        room="move-refusals", identity="member", destination_room="move-refusals"
                    )
                )
            assert caught.value.code == "invalid_argument"
        long_name = "x" * 300  # over limit.max_room_name_length
        async with admin_api(server, "move-refusals", long_name) as lk:
            with pytest.raises(api.TwirpError) as caught:
                await lk.room.forward_participant(
                    api.ForwardParticipantRequest(
                        room="move-refusals", identity="member", destination_room=long_name
                    )
                )
            assert caught.value.code == "invalid_argument"
        assert member.isconnected()
    finally:
        await member.disconnect()


async def test_forward_participant_until_removed_or_gone(server: ServerProcess) -> None:
    source = await connect(server, "source", "fwd-from", can_update_own_metadata=True)
    listener = await connect(server, "listener", "fwd-from")
    watcher = await connect(server, "watcher", "fwd-to")
    watcher_subscribed = EventLog(watcher, "track_subscribed")
    listener_subscribed = EventLog(listener, "track_subscribed")
    metadata = EventLog(watcher, "participant_metadata_changed")
    gone = EventLog(watcher, "participant_disconnected")
    try:
        async with publishing_tone(source):
            async with admin_api(server, "fwd-from", "fwd-to") as lk:
                await lk.room.forward_participant(
                    api.ForwardParticipantRequest(
                        room="fwd-from", identity="source", destination_room="fwd-to"
                    )
                )
                await wait_until(lambda: "source" in watcher.remote_participants)
                copy = watcher.remote_participants["source"]
                assert rtc.ParticipantKindDetail.PARTICIPANT_KIND_DETAIL_FORWARDED in (
                    copy.kind_details
                )
                assert await hears_tone(await subscribed_from(watcher_subscribed, "source"))
                assert await hears_tone(await subscribed_from(listener_subscribed, "source"))
                # Changes to the source reach its copy.
                await source.local_participant.set_metadata("changed at the source")
                await metadata.wait_for(lambda e: e[2] == "changed at the source")
            await remove_copy(server, "fwd-to", {"source", "watcher"})
            await gone.wait_for(lambda p: p.identity == "source")
            assert source.isconnected() and "source" in listener.remote_participants
            # Forwarded again, then the source leaves: the copy goes too.
            async with admin_api(server, "fwd-from", "fwd-to") as lk:
                await lk.room.forward_participant(
                    api.ForwardParticipantRequest(
                        room="fwd-from", identity="source", destination_room="fwd-to"
                    )
                )
            await wait_until(lambda: "source" in watcher.remote_participants)
        await source.disconnect()
        await wait_until(lambda: "source" not in watcher.remote_participants)
    finally:
        for participant in (source, listener, watcher):
            await participant.disconnect()


async def test_move_to_a_room_on_another_node_reconnects_there(
    nodes: Callable[..., ServerProcess],
) -> None:
    first, second = await rooms_on_two_nodes(nodes, "x-from", "x-to")
    mover = await connect(first, "mover", "x-from")
    watcher = await connect(second, "watcher", "x-to")
    moved = EventLog(mover, "moved")
    watcher_subscribed = EventLog(watcher, "track_subscribed")
    try:
        async with publishing_tone(mover):
            async with admin_api(second, "x-from", "x-to") as lk:
                await lk.room.move_participant(
                    api.MoveParticipantRequest(
                        room="x-from", identity="mover", destination_room="x-to"
                    )
                )
            await moved.wait_for()
            await wait_until(lambda: "mover" in watcher.remote_participants, within_s=30)
            await wait_until(lambda: mover.isconnected() and mover.name == "x-to", within_s=30)
            assert await hears_tone(await subscribed_from(watcher_subscribed, "mover"))
            async with admin_api(first, "x-from", "") as lk:
                assert await identities(lk, "x-from") == set()
    finally:
        await mover.disconnect()
        await watcher.disconnect()


async def widest_frame(track: rtc.Track, width: int, within_s: float) -> int:
    """The width of the first frame at least ``width`` wide, or the widest seen in time."""
    stream = rtc.VideoStream(track)
    widest = 0
    try:
        async with asyncio.timeout(within_s):
            async for event in stream:
                widest = max(widest, event.frame.width)
                if widest >= width:
                    break
    except TimeoutError:
        pass
    finally:
        await stream.aclose()
    return widest


async def forward(lk: api.LiveKitAPI, room: str, identity: str, destination: str) -> None:
    await lk.room.forward_participant(
        api.ForwardParticipantRequest(room=room, identity=identity, destination_room=destination)
    )


async def test_forward_to_a_room_on_another_node_relays_its_media(
    nodes: Callable[..., ServerProcess],
) -> None:
    """The source's audio, a simulcast camera it publishes later (up to its top layer),
    its metadata and its unpublishing reach the copy on the other node; removing the copy
    there, and the source leaving, end the forward on both nodes."""
    first, second = await rooms_on_two_nodes(nodes, "xf-from", "xf-to")
    source = await connect(first, "source", "xf-from", can_update_own_metadata=True)
    watcher = await connect(second, "watcher", "xf-to")
    subscribed = EventLog(watcher, "track_subscribed")
    unsubscribed = EventLog(watcher, "track_unsubscribed")
    metadata = EventLog(watcher, "participant_metadata_changed")
    gone = EventLog(watcher, "participant_disconnected")
    video = rtc.TrackKind.KIND_VIDEO
    try:
        async with publishing_tone(source):
            # Asked of the destination's node: the call is routed to the source room's.
            async with admin_api(second, "xf-from", "xf-to") as lk:
                await forward(lk, "xf-from", "source", "xf-to")
                with pytest.raises(api.TwirpError) as caught:
                    await forward(lk, "xf-from", "source", "xf-to")
                assert caught.value.code == "already_exists"
            await wait_until(lambda: "source" in watcher.remote_participants)
            copy = watcher.remote_participants["source"]
            assert rtc.ParticipantKindDetail.PARTICIPANT_KIND_DETAIL_FORWARDED in copy.kind_details
            assert await hears_tone(await subscribed_from(subscribed, "source"))
            async with publishing_colour(source, simulcast=True, size=(640, 360)) as published:
                camera, _, _ = await subscribed.wait_for(lambda e: e[0].kind == video)
                assert await widest_frame(camera, 640, within_s=20) == 640
                await source.local_participant.unpublish_track(published.sid)
            await unsubscribed.wait_for(lambda e: e[0].kind == video)
            await source.local_participant.set_metadata("changed at the source")
            await metadata.wait_for(lambda e: e[2] == "changed at the source")
            await remove_copy(second, "xf-to", {"source", "watcher"})
            await gone.wait_for(lambda p: p.identity == "source")
            # The source's node heard of it: the same forward can be made again.
            async with admin_api(first, "xf-from", "xf-to") as lk:
                for _ in range(50):
                    try:
                        await forward(lk, "xf-from", "source", "xf-to")
                        break
                    except api.TwirpError as exc:
                        assert exc.code == "already_exists"
                        await asyncio.sleep(0.1)
                else:
                    pytest.fail("the source's node still holds the removed forward")
            await wait_until(lambda: "source" in watcher.remote_participants)
        await source.disconnect()
        await wait_until(lambda: "source" not in watcher.remote_participants, within_s=15)
    finally:
        await source.disconnect()
        await watcher.disconnect()


async def test_a_forward_ends_when_the_source_node_dies(
    nodes: Callable[..., ServerProcess],
) -> None:
    """The destination's node notices the source's node is gone from the cluster and the copy
    leaves its room, as LiveKit removes participants of a dead node."""
    first, second = await rooms_on_two_nodes(nodes, "xd-from", "xd-to")
    source = await connect(first, "source", "xd-from")
    watcher = await connect(second, "watcher", "xd-to")
    try:
        async with publishing_tone(source):
            async with admin_api(first, "xd-from", "xd-to") as lk:
                await forward(lk, "xd-from", "source", "xd-to")
            await wait_until(lambda: "source" in watcher.remote_participants)
            first.proc.kill()
            first.proc.wait()
            await wait_until(lambda: "source" not in watcher.remote_participants, within_s=20)
            assert watcher.isconnected()
    finally:
        await source.disconnect()
        await watcher.disconnect()
