"""The server API through the official ``livekit-api`` client, effects seen by real SDK
participants."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from livekit import api, rtc

from tests.e2e.harness import API_KEY, API_SECRET, ServerProcess
from tests.e2e.sdk import EventLog, connect, joined, wait_until, watching
from tests.e2e.test_media import publishing_tone

pytestmark = pytest.mark.sdk


@asynccontextmanager
async def server_api(server: ServerProcess, token: str = "") -> AsyncIterator[api.LiveKitAPI]:
    if token:
        client = api.LiveKitAPI.with_token(token=token, url=server.http_url)
    else:
        client = api.LiveKitAPI(server.http_url, API_KEY, API_SECRET)
    try:
        yield client
    finally:
        await client.aclose()


def grant_token(secret: str = API_SECRET, **grants: Any) -> str:
    token = api.AccessToken(API_KEY, secret).with_identity("backend")
    return str(token.with_grants(api.VideoGrants(**grants)).to_jwt())


async def refused(call: Any) -> api.TwirpError:
    with pytest.raises(api.TwirpError) as caught:
        await call
    return caught.value


# --- rooms ----------------------------------------------------------------------------------


async def test_create_list_and_delete_rooms(server: ServerProcess) -> None:
    async with server_api(server) as lk:
        created = await lk.room.create_room(
            api.CreateRoomRequest(
                name="api-room", empty_timeout=120, max_participants=7, metadata="first"
            )
        )
        assert created.sid.startswith("RM_")
        assert (created.name, created.empty_timeout, created.max_participants) == (
            "api-room",
            120,
            7,
        )
        assert created.metadata == "first"
        await lk.room.create_room(api.CreateRoomRequest(name="api-other"))
        listed = await lk.room.list_rooms(api.ListRoomsRequest(names=["api-room"]))
        assert [r.name for r in listed.rooms] == ["api-room"]
        assert listed.rooms[0].sid == created.sid
        everything = await lk.room.list_rooms(api.ListRoomsRequest())
        assert {"api-room", "api-other"} <= {r.name for r in everything.rooms}
        again = await lk.room.create_room(api.CreateRoomRequest(name="api-room"))
        assert again.sid == created.sid, "creating an existing room returns it"
        await lk.room.delete_room(api.DeleteRoomRequest(room="api-room"))
        await lk.room.delete_room(api.DeleteRoomRequest(room="api-other"))
        remaining = await lk.room.list_rooms(api.ListRoomsRequest())
        assert not {"api-room", "api-other"} & {r.name for r in remaining.rooms}
        error = await refused(lk.room.delete_room(api.DeleteRoomRequest(room="api-room")))
        assert (error.code, error.status) == ("not_found", 404)


async def test_deleting_a_room_disconnects_its_participants(server: ServerProcess) -> None:
    participant = await connect(server, "doomed", "api-delete")
    disconnected = EventLog(participant, "disconnected")
    async with server_api(server) as lk:
        await lk.room.delete_room(api.DeleteRoomRequest(room="api-delete"))
    reason = await disconnected.wait_for()
    assert reason == rtc.DisconnectReason.ROOM_DELETED


async def test_room_metadata_update_reaches_participants(server: ServerProcess) -> None:
    async with watching(server, "reader", "api-meta", "room_metadata_changed") as (room, logs):
        async with server_api(server) as lk:
            updated = await lk.room.update_room_metadata(
                api.UpdateRoomMetadataRequest(room="api-meta", metadata="new topic")
            )
        assert updated.metadata == "new topic"
        old_new = await logs["room_metadata_changed"].wait_for()
        assert old_new[1] == "new topic"
        assert room.metadata == "new topic"


# --- grants and errors ----------------------------------------------------------------------


async def test_every_method_needs_its_grant(server: ServerProcess) -> None:
    async with server_api(server) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name="api-guarded"))
    wrong_room = grant_token(room_admin=True, room="elsewhere")
    no_grants = grant_token(room_join=True, room="api-guarded")
    for token in (wrong_room, no_grants):
        async with server_api(server, token) as lk:
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: lk.room.create_room(api.CreateRoomRequest(name="api-guarded")),
                lambda: lk.room.list_rooms(api.ListRoomsRequest()),
                lambda: lk.room.delete_room(api.DeleteRoomRequest(room="api-guarded")),
                lambda: lk.room.list_participants(api.ListParticipantsRequest(room="api-guarded")),
                lambda: lk.room.get_participant(api.RoomParticipantIdentity(room="api-guarded")),
                lambda: lk.room.remove_participant(api.RoomParticipantIdentity(room="api-guarded")),
                lambda: lk.room.mute_published_track(api.MuteRoomTrackRequest(room="api-guarded")),
                lambda: lk.room.update_participant(
                    api.UpdateParticipantRequest(room="api-guarded")
                ),
                lambda: lk.room.update_subscriptions(
                    api.UpdateSubscriptionsRequest(room="api-guarded")
                ),
                lambda: lk.room.send_data(api.SendDataRequest(room="api-guarded", data=b"x")),
                lambda: lk.room.update_room_metadata(
                    api.UpdateRoomMetadataRequest(room="api-guarded")
                ),
                lambda: lk.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(room="api-guarded", agent_name="a")
                ),
                lambda: lk.agent_dispatch.list_dispatch("api-guarded"),
            ]
            for call in calls:
                error = await refused(call())
                assert (error.code, error.status, error.message) == (
                    "unauthenticated",
                    401,
                    "permissions denied",
                )
    async with server_api(server) as lk:
        await lk.room.delete_room(api.DeleteRoomRequest(room="api-guarded"))


async def test_bad_token_is_refused_before_twirp(server: ServerProcess) -> None:
    async with server_api(server, grant_token(secret="x" * 40, room_list=True)) as lk:
        error = await refused(lk.room.list_rooms(api.ListRoomsRequest()))
    assert (error.status, error.code) == (401, "unauthenticated")
    assert error.message.startswith("invalid authorization token"), "never an empty message"
    async with aiohttp.ClientSession() as http:
        url = f"{server.http_url}/twirp/livekit.RoomService/ListRooms"
        headers = {"Authorization": "Bearer not-a-jwt", "Content-Type": "application/json"}
        async with http.post(url, data="{}", headers=headers) as response:
            assert response.status == 401
            assert "invalid authorization token" in await response.text()


async def test_unknown_room_participant_and_track(server: ServerProcess) -> None:
    async with server_api(server) as lk:
        error = await refused(lk.room.list_participants(api.ListParticipantsRequest(room="nope")))
        assert (error.code, error.message) == ("not_found", "requested room does not exist")
        async with joined(server, "present", "api-lookup"):
            lookups = [
                lk.room.get_participant(
                    api.RoomParticipantIdentity(room="api-lookup", identity="x")
                ),
                lk.room.remove_participant(
                    api.RoomParticipantIdentity(room="api-lookup", identity="x")
                ),
                lk.room.update_participant(
                    api.UpdateParticipantRequest(room="api-lookup", identity="x", metadata="m")
                ),
            ]
            for call in lookups:
                error = await refused(call)
                assert (error.code, error.status) == ("not_found", 404)
                assert error.message == "participant does not exist"
            error = await refused(
                lk.room.mute_published_track(
                    api.MuteRoomTrackRequest(
                        room="api-lookup", identity="present", track_sid="TR_x", muted=True
                    )
                )
            )
            assert (error.code, error.status) == ("not_found", 404)
            # livekit-api always sends a fresh 16-byte nonce, so a bad one goes raw.
            async with aiohttp.ClientSession() as http:
                body = json.dumps({"room": "api-lookup", "data": "eA==", "nonce": "MTIz"})
                headers = _admin_headers("application/json", room="api-lookup")
                url = f"{server.http_url}/twirp/livekit.RoomService/SendData"
                async with http.post(url, data=body, headers=headers) as response:
                    assert response.status == 400
                    assert (await response.json())["code"] == "invalid_argument"


# --- participants ---------------------------------------------------------------------------


async def test_list_get_and_update_participant(server: ServerProcess) -> None:
    events = ("participant_metadata_changed", "participant_name_changed")
    async with (
        joined(server, "subject", "api-people") as subject,
        watching(server, "observer", "api-people", *events, "participant_attributes_changed") as (
            _,
            logs,
        ),
    ):
        own = EventLog(subject, "participant_metadata_changed")
        async with server_api(server) as lk:
            listed = await lk.room.list_participants(api.ListParticipantsRequest(room="api-people"))
            assert {p.identity for p in listed.participants} == {"subject", "observer"}
            info = await lk.room.get_participant(
                api.RoomParticipantIdentity(room="api-people", identity="subject")
            )
            assert info.sid == subject.local_participant.sid
            updated = await lk.room.update_participant(
                api.UpdateParticipantRequest(
                    room="api-people",
                    identity="subject",
                    metadata="promoted",
                    name="Subject Prime",
                    attributes={"role": "host"},
                )
            )
        assert (updated.metadata, updated.name, dict(updated.attributes)) == (
            "promoted",
            "Subject Prime",
            {"role": "host"},
        )
        seen = await logs["participant_metadata_changed"].wait_for()
        assert (seen[0].identity, seen[2]) == ("subject", "promoted")
        named = await logs["participant_name_changed"].wait_for()
        assert named[2] == "Subject Prime"
        changed = await logs["participant_attributes_changed"].wait_for()
        assert changed[0] == {"role": "host"}
        await own.wait_for(lambda e: e[2] == "promoted")
        assert subject.local_participant.metadata == "promoted"


async def test_remove_participant_disconnects_it(server: ServerProcess) -> None:
    async with watching(server, "stayer", "api-remove", "participant_disconnected") as (_, logs):
        removed = await connect(server, "leaver", "api-remove")
        disconnected = EventLog(removed, "disconnected")
        async with server_api(server) as lk:
            await lk.room.remove_participant(
                api.RoomParticipantIdentity(room="api-remove", identity="leaver")
            )
            assert await disconnected.wait_for() == rtc.DisconnectReason.PARTICIPANT_REMOVED
            gone = await logs["participant_disconnected"].wait_for()
            assert gone.identity == "leaver"
            listed = await lk.room.list_participants(api.ListParticipantsRequest(room="api-remove"))
            assert [p.identity for p in listed.participants] == ["stayer"]


async def test_send_data_from_the_server(server: ServerProcess) -> None:
    async with (
        watching(server, "addressee", "api-data", "data_received") as (_, to_logs),
        watching(server, "bystander", "api-data", "data_received") as (_, other_logs),
        server_api(server) as lk,
    ):
        await lk.room.send_data(
            api.SendDataRequest(
                room="api-data",
                data=b"to everyone",
                kind=api.DataPacket.Kind.RELIABLE,
                topic="news",
            )
        )
        await lk.room.send_data(
            api.SendDataRequest(
                room="api-data",
                data=b"just you",
                kind=api.DataPacket.Kind.RELIABLE,
                destination_identities=["addressee"],
            )
        )
        packet = await to_logs["data_received"].wait_for(lambda p: p.data == b"just you")
        assert packet.participant is None, "server data has no sender"
        broadcast = await other_logs["data_received"].wait_for(lambda p: p.data == b"to everyone")
        assert broadcast.topic == "news"
        await to_logs["data_received"].wait_for(lambda p: p.data == b"to everyone")
        await asyncio.sleep(0.5)
        assert all(p.data != b"just you" for p in other_logs["data_received"].items)


async def test_mute_published_track_from_the_server(server: ServerProcess) -> None:
    async with (
        joined(server, "speaker", "api-mute") as speaker,
        watching(server, "listener", "api-mute", "track_muted", "track_subscribed") as (_, logs),
        publishing_tone(speaker) as publication,
        server_api(server) as lk,
    ):
        await logs["track_subscribed"].wait_for()
        response = await lk.room.mute_published_track(
            api.MuteRoomTrackRequest(
                room="api-mute", identity="speaker", track_sid=publication.sid, muted=True
            )
        )
        assert response.track.muted
        muted = await logs["track_muted"].wait_for()
        assert muted[1].sid == publication.sid
        await wait_until(lambda: publication.muted)
        error = await refused(
            lk.room.mute_published_track(
                api.MuteRoomTrackRequest(
                    room="api-mute", identity="speaker", track_sid=publication.sid, muted=False
                )
            )
        )
        assert (error.code, error.status, error.message) == (
            "failed_precondition",
            412,
            "remote unmute not enabled",
        )


async def test_remote_unmute_when_enabled(start: Callable[..., ServerProcess]) -> None:
    server = start("room:\n  enable_remote_unmute: true\n")
    async with (
        joined(server, "speaker", "api-unmute") as speaker,
        watching(server, "listener", "api-unmute", "track_unmuted", "track_subscribed") as (
            _,
            logs,
        ),
        publishing_tone(speaker) as publication,
        server_api(server) as lk,
    ):
        await logs["track_subscribed"].wait_for()
        for muted in (True, False):
            response = await lk.room.mute_published_track(
                api.MuteRoomTrackRequest(
                    room="api-unmute", identity="speaker", track_sid=publication.sid, muted=muted
                )
            )
            assert response.track.muted is muted
        await logs["track_unmuted"].wait_for(lambda e: e[1].sid == publication.sid)


async def test_revoking_publish_unpublishes_tracks(server: ServerProcess) -> None:
    async with (
        joined(server, "demoted", "api-revoke") as demoted,
        watching(server, "audience", "api-revoke", "track_unpublished", "track_subscribed") as (
            _,
            logs,
        ),
        publishing_tone(demoted) as publication,
        server_api(server) as lk,
    ):
        await logs["track_subscribed"].wait_for()
        permission = api.ParticipantPermission(can_subscribe=True, can_publish=False)
        info = await lk.room.update_participant(
            api.UpdateParticipantRequest(
                room="api-revoke", identity="demoted", permission=permission
            )
        )
        assert not info.permission.can_publish
        assert not info.tracks
        gone = await logs["track_unpublished"].wait_for()
        assert gone[0].sid == publication.sid


async def test_update_subscriptions_for_a_participant(server: ServerProcess) -> None:
    manual = rtc.RoomOptions(auto_subscribe=False)
    events = ("track_published", "track_subscribed")
    async with (
        joined(server, "broadcaster", "api-subs") as broadcaster,
        watching(server, "tuned", "api-subs", *events, options=manual) as (_, logs),
        publishing_tone(broadcaster) as publication,
        server_api(server) as lk,
    ):
        await logs["track_published"].wait_for()
        await lk.room.update_subscriptions(
            api.UpdateSubscriptionsRequest(
                room="api-subs", identity="tuned", track_sids=[publication.sid], subscribe=True
            )
        )
        track, _, _ = await logs["track_subscribed"].wait_for()
        assert track.sid == publication.sid


# --- agent dispatch -------------------------------------------------------------------------


async def test_agent_dispatches_are_stored_listed_and_deleted(server: ServerProcess) -> None:
    async with server_api(server) as lk:
        # LiveKit creates the room of a dispatch when rooms may be created on demand.
        early = await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(room="api-new-room", agent_name="helper")
        )
        assert early.room == "api-new-room"
        rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=["api-new-room"]))
        assert [r.name for r in rooms.rooms] == ["api-new-room"]
        listed = await lk.agent_dispatch.list_dispatch("api-new-room")
        assert sorted(d.agent_name for d in listed) == ["", "helper"], "automatic one too"
        await lk.room.delete_room(api.DeleteRoomRequest(room="api-new-room"))
        await lk.room.create_room(
            api.CreateRoomRequest(
                name="api-agents", agents=[api.RoomAgentDispatch(agent_name="greeter")]
            )
        )
        created = await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(room="api-agents", agent_name="helper", metadata="m")
        )
        assert created.id.startswith("AD_")
        assert (created.agent_name, created.room, created.metadata) == ("helper", "api-agents", "m")
        listed = await lk.agent_dispatch.list_dispatch("api-agents")
        assert sorted(d.agent_name for d in listed) == ["greeter", "helper"]
        deleted = await lk.agent_dispatch.delete_dispatch(created.id, "api-agents")
        assert deleted.id == created.id
        listed = await lk.agent_dispatch.list_dispatch("api-agents")
        assert [d.agent_name for d in listed] == ["greeter"]
        error = await refused(lk.agent_dispatch.delete_dispatch(created.id, "api-agents"))
        assert (error.code, error.status) == ("not_found", 404)
        await lk.room.delete_room(api.DeleteRoomRequest(room="api-agents"))


# --- the Twirp wire -------------------------------------------------------------------------


def _admin_headers(content_type: str, room: str = "") -> dict[str, str]:
    token = grant_token(room_create=True, room_list=True, room_admin=bool(room), room=room)
    return {"Authorization": f"Bearer {token}", "Content-Type": content_type}


async def test_json_bodies_in_both_naming_styles(server: ServerProcess) -> None:
    url = f"{server.http_url}/twirp/livekit.RoomService/CreateRoom"
    async with aiohttp.ClientSession() as http:
        for body in (
            {"name": "api-json", "emptyTimeout": 33},
            {"name": "api-json2", "empty_timeout": 33},
        ):
            async with http.post(
                url, data=json.dumps(body), headers=_admin_headers("application/json")
            ) as response:
                assert response.status == 200
                assert response.content_type == "application/json"
                room = await response.json()
            # Proto field names, defaults emitted (LiveKit's EmitUnpopulated).
            assert room["empty_timeout"] == 33
            assert room["num_participants"] == 0
            assert room["metadata"] == ""
        double = f"{server.http_url}//twirp/livekit.RoomService/ListRooms"
        async with http.post(double, data="{}", headers=_admin_headers("application/json")) as r:
            assert r.status == 200
            assert {"api-json", "api-json2"} <= {room["name"] for room in (await r.json())["rooms"]}
        for name in ("api-json", "api-json2"):
            delete = f"{server.http_url}/twirp/livekit.RoomService/DeleteRoom"
            body_text = json.dumps({"room": name})
            async with http.post(
                delete, data=body_text, headers=_admin_headers("application/json")
            ) as r:
                assert r.status == 200


@pytest.mark.parametrize(
    ("path", "content_type", "body", "status", "code"),
    [
        ("livekit.RoomService/NoSuchMethod", "application/json", "{}", 404, "bad_route"),
        ("livekit.NoService/ListRooms", "application/json", "{}", 404, "bad_route"),
        ("livekit.RoomService/ListRooms", "text/plain", "{}", 404, "bad_route"),
        ("livekit.RoomService/ListRooms", "application/json", "{not json", 400, "malformed"),
        ("livekit.RoomService/ListRooms", "application/protobuf", "\xff\xff", 400, "malformed"),
        ("livekit.RoomService/MoveParticipant", "application/json", "{}", 401, "unauthenticated"),
    ],
)
async def test_twirp_errors(
    server: ServerProcess, path: str, content_type: str, body: str, status: int, code: str
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.http_url}/twirp/{path}", data=body, headers=_admin_headers(content_type)
        ) as response,
    ):
        assert response.status == status
        error = await response.json()
        assert error["code"] == code
        assert error["msg"]


async def test_oversized_request_body_is_refused(start: Callable[..., ServerProcess]) -> None:
    server = start("limit:\n  max_api_request_body_size: 1024\n")
    async with server_api(server) as lk:
        error = await refused(
            lk.room.create_room(api.CreateRoomRequest(name="api-big", metadata="x" * 4096))
        )
        assert error.code == "resource_exhausted"
        rooms = await lk.room.list_rooms(api.ListRoomsRequest())
        assert "api-big" not in {r.name for r in rooms.rooms}


async def test_list_rooms_counts_participants_and_publishers(server: ServerProcess) -> None:
    async with (
        joined(server, "talker", "counted") as talker,
        joined(server, "quiet", "counted"),
        server_api(server) as lk,
    ):
        listed = await lk.room.list_rooms(api.ListRoomsRequest(names=["counted"]))
        (room,) = listed.rooms
        assert (room.num_participants, room.num_publishers) == (2, 0)
        async with publishing_tone(talker):
            for _ in range(50):
                listed = await lk.room.list_rooms(api.ListRoomsRequest(names=["counted"]))
                if listed.rooms[0].num_publishers == 1:
                    break
                await asyncio.sleep(0.1)
            assert (listed.rooms[0].num_participants, listed.rooms[0].num_publishers) == (2, 1)
