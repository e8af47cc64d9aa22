"""MoveParticipant and ForwardParticipant on one node, without a network."""

from __future__ import annotations

import dataclasses

import pytest
from livekit.protocol import models, rtc

from protocol.sdp_media import Codec
from sfu.events import EventBus, EventKind, RoomEvent
from sfu.forwarding import ForwardError
from sfu.moves import MoveError, move_participant
from sfu.receiver import PublishedTrack, TrackReceiver
from sfu.room import Room, RoomSettings
from tests.unit.test_room import RecordingSink, _join

FORWARDED = models.ParticipantInfo.KindDetail.FORWARDED
DISCONNECTED = models.ParticipantInfo.State.DISCONNECTED


def _rooms() -> tuple[Room, Room, list[tuple[str, EventKind, str]]]:
    seen: list[tuple[str, EventKind, str]] = []
    bus = EventBus()

    class Recorder:
        def on_room_event(self, event: RoomEvent) -> None:
            identity = event.participant.identity if event.participant is not None else ""
            seen.append((event.room.name, event.kind, identity))

    bus.subscribe(Recorder())
    settings = RoomSettings()
    source = Room(name="from", sid="RM_from", settings=settings, now=0.0, events=bus)
    destination = Room(name="to", sid="RM_to", settings=settings, now=0.0, events=bus)
    return source, destination, seen


def _updates(sink: RecordingSink) -> list[models.ParticipantInfo]:
    return [info for r in sink.of("update") for info in r.update.participants]


async def test_move_tells_the_participant_and_both_rooms() -> None:
    source, destination, seen = _rooms()
    mover, mover_sink = await _join(source, "mover")
    mover.params = dataclasses.replace(mover.params, protocol=16)
    _, stayer_sink = await _join(source, "stayer")
    _, host_sink = await _join(destination, "host")
    asked: list[str] = []

    def token_for(room_name: str, room: Room | None) -> str:
        asked.append(room_name)
        assert room is destination
        return "new-token"

    mover.on_moved = token_for
    await move_participant(source, mover, destination)
    assert asked == ["to"]
    assert set(source.participants) == {"stayer"}
    assert set(destination.participants) == {"host", "mover"}
    moved = mover_sink.of("room_moved")[-1].room_moved
    assert (moved.room.name, moved.token, moved.participant.identity) == (
        "to",
        "new-token",
        "mover",
    )
    assert [p.identity for p in moved.other_participants] == ["host"]
    assert mover_sink.of("refresh_token")[-1].refresh_token == "new-token"
    assert any(i.identity == "mover" and i.state == DISCONNECTED for i in _updates(stayer_sink))
    assert any(i.identity == "mover" and i.state != DISCONNECTED for i in _updates(host_sink))
    assert ("from", EventKind.PARTICIPANT_LEFT, "mover") in seen
    assert ("to", EventKind.PARTICIPANT_JOINED, "mover") in seen
    assert not mover.is_closed


async def test_move_refuses_old_clients_and_the_same_room() -> None:
    source, destination, _ = _rooms()
    mover, _ = await _join(source, "mover")  # protocol 15: cannot read room_moved
    with pytest.raises(MoveError) as caught:
        await move_participant(source, mover, destination)
    assert caught.value.code == "failed_precondition"
    mover.params = dataclasses.replace(mover.params, protocol=16)
    with pytest.raises(MoveError) as caught:
        await move_participant(source, mover, source)
    assert caught.value.code == "invalid_argument"
    assert "mover" in source.participants


async def test_forwarded_copy_follows_its_source_and_ends_with_it() -> None:
    source, destination, seen = _rooms()
    origin, _ = await _join(source, "origin")
    _, watcher_sink = await _join(destination, "watcher")
    copy = source.forwards.forward(origin, destination)
    arrived = [i for i in _updates(watcher_sink) if i.identity == "origin"]
    assert arrived and list(arrived[-1].kind_details) == [FORWARDED]
    assert arrived[-1].sid == copy.sid != origin.sid
    assert destination.to_proto().num_participants == 2
    with pytest.raises(ForwardError) as caught:
        source.forwards.forward(origin, destination)
    assert caught.value.code == "already_exists"
    source.update_participant(origin, "", "new metadata", {})
    source._flush_batched()
    assert _updates(watcher_sink)[-1].metadata == "new metadata"
    await source.remove(origin, models.DisconnectReason.CLIENT_INITIATED)
    assert _updates(watcher_sink)[-1].state == DISCONNECTED
    assert not destination.forwards.incoming and not source.forwards.outgoing
    assert ("to", EventKind.PARTICIPANT_LEFT, "origin") in seen


async def test_closing_the_destination_ends_the_forward() -> None:
    source, destination, _ = _rooms()
    origin, _ = await _join(source, "origin")
    source.forwards.forward(origin, destination)
    await destination.close(models.DisconnectReason.ROOM_DELETED)
    assert not source.forwards.outgoing
    assert source.participants["origin"] is origin and not origin.is_closed


async def test_the_sources_permission_applies_to_its_copy() -> None:
    source, destination, _ = _rooms()
    origin, _ = await _join(source, "origin")
    watcher, watcher_sink = await _join(destination, "watcher")
    receiver = TrackReceiver(Codec(111, "audio/opus", 48000, 2), 1, lambda _: None)
    info = models.TrackInfo(sid="TR_a", type=models.TrackType.AUDIO, mime_type="audio/opus")
    origin.tracks.published["TR_a"] = PublishedTrack(info=info, receiver=receiver)
    source.forwards.forward(origin, destination)
    assert "TR_a" in watcher.tracks.downtracks
    source.update_subscription_permission(origin, rtc.SubscriptionPermission())
    assert "TR_a" not in watcher.tracks.downtracks
    denied = watcher_sink.of("subscription_permission_update")[-1].subscription_permission_update
    assert (denied.track_sid, denied.allowed) == ("TR_a", False)
    allowed = rtc.TrackPermission(participant_identity="watcher", all_tracks=True)
    source.update_subscription_permission(
        origin, rtc.SubscriptionPermission(track_permissions=[allowed])
    )
    assert "TR_a" in watcher.tracks.downtracks
