"""Participants of the real SDK join rooms, see each other arrive and leave."""

from __future__ import annotations

import asyncio
from functools import partial

import pytest
from livekit import rtc

from tests.e2e.harness import ServerProcess, make_token
from tests.e2e.sdk import EventLog, connect, joined, wait_until

pytestmark = pytest.mark.sdk


async def test_two_participants_see_each_other_arrive_and_leave(server: ServerProcess) -> None:
    alice = await connect(server, "alice", "two")
    arrivals = EventLog(alice, "participant_connected")
    departures = EventLog(alice, "participant_disconnected")
    try:
        assert alice.connection_state == rtc.ConnectionState.CONN_CONNECTED
        sid = await alice.sid
        assert sid.startswith("RM_")
        assert alice.local_participant.sid.startswith("PA_")
        async with joined(server, "bob", "two") as bob:
            await arrivals.wait_for(lambda p: p.identity == "bob")
            assert set(bob.remote_participants) == {"alice"}
            assert await bob.sid == sid
            assert bob.remote_participants["alice"].sid == alice.local_participant.sid
        gone = await departures.wait_for(lambda p: p.identity == "bob")
        assert gone.identity == "bob"
        await wait_until(lambda: "bob" not in alice.remote_participants)
    finally:
        await alice.disconnect()


def _sees_others_of(room: rtc.Room, everyone: set[str]) -> bool:
    return set(room.remote_participants) == everyone - {room.local_participant.identity}


async def test_three_participants_in_one_room(server: ServerProcess) -> None:
    rooms = [await connect(server, name, "three") for name in ("p1", "p2", "p3")]
    try:
        for room in rooms:
            await wait_until(partial(_sees_others_of, room, {"p1", "p2", "p3"}))
        first = rooms.pop(0)
        await first.disconnect()
        for room in rooms:
            await wait_until(partial(_sees_others_of, room, {"p2", "p3"}))
    finally:
        for room in rooms:
            await room.disconnect()


async def test_rooms_are_separate(server: ServerProcess) -> None:
    async with joined(server, "a", "room-a") as a, joined(server, "b", "room-b") as b:
        await asyncio.sleep(0.5)
        assert not a.remote_participants
        assert not b.remote_participants
        assert await a.sid != await b.sid


async def test_duplicate_identity_kicks_the_older_session(server: ServerProcess) -> None:
    first = await connect(server, "dup", "dups")
    disconnected = EventLog(first, "disconnected")
    async with joined(server, "watcher", "dups") as watcher:
        await wait_until(lambda: "dup" in watcher.remote_participants)
        old_sid = watcher.remote_participants["dup"].sid
        async with joined(server, "dup", "dups") as second:
            reason = await disconnected.wait_for()
            assert reason == rtc.DisconnectReason.DUPLICATE_IDENTITY
            new_sid = second.local_participant.sid
            assert new_sid != old_sid
            await wait_until(
                lambda: (
                    "dup" in watcher.remote_participants
                    and watcher.remote_participants["dup"].sid == new_sid
                )
            )
            assert second.connection_state == rtc.ConnectionState.CONN_CONNECTED
    await first.disconnect()


async def test_metadata_name_and_attributes_reach_others(server: ServerProcess) -> None:
    async with (
        joined(server, "editor", "meta", can_update_own_metadata=True) as editor,
        joined(server, "viewer", "meta") as viewer,
    ):
        metadata = EventLog(viewer, "participant_metadata_changed")
        attributes = EventLog(viewer, "participant_attributes_changed")
        names = EventLog(viewer, "participant_name_changed")
        await wait_until(lambda: "editor" in viewer.remote_participants)
        await editor.local_participant.set_metadata("hello")
        await editor.local_participant.set_attributes({"color": "blue", "size": "xl"})
        await editor.local_participant.set_name("The Editor")
        await metadata.wait_for(lambda e: e[0].identity == "editor" and e[2] == "hello")
        await attributes.wait_for(lambda e: e[1].identity == "editor")
        await names.wait_for(lambda e: e[0].identity == "editor")
        remote = viewer.remote_participants["editor"]
        assert remote.metadata == "hello"
        assert remote.attributes == {"color": "blue", "size": "xl"}
        assert remote.name == "The Editor"
        # An empty value deletes an attribute (LiveKit semantics).
        await editor.local_participant.set_attributes({"size": ""})
        await wait_until(lambda: remote.attributes == {"color": "blue"})


async def test_metadata_update_without_permission_is_refused(server: ServerProcess) -> None:
    async with joined(server, "mallory", "meta2") as mallory, joined(server, "v", "meta2") as v:
        await wait_until(lambda: "mallory" in v.remote_participants)
        # The Rust SDK does not surface the server's NOT_ALLOWED response (the raw-protocol test
        # in test_bad_input.py checks it); what matters here is that nobody sees the change.
        await asyncio.wait_for(mallory.local_participant.set_metadata("evil"), 10)
        await asyncio.sleep(0.5)
        assert v.remote_participants["mallory"].metadata == ""


async def test_newcomer_becomes_active_and_gets_a_fresh_token(server: ServerProcess) -> None:
    async with joined(server, "host", "active") as host:
        active = EventLog(host, "participant_active")
        newcomer = rtc.Room()
        refreshed = EventLog(newcomer, "token_refreshed")
        try:
            token = make_token("newcomer", "active")
            await asyncio.wait_for(newcomer.connect(server.ws_url, token), 15)
            became_active = await active.wait_for(lambda p: p.identity == "newcomer")
            assert became_active.state == rtc.ParticipantState.PARTICIPANT_STATE_ACTIVE
            await refreshed.wait_for()
        finally:
            await newcomer.disconnect()
