"""Room rules without a network: join responses, visibility, data routing, idle timeouts."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any, cast

import pytest
from livekit.protocol import metrics, models, rtc

from config.schema import AudioConfig
from protocol.sdp_media import Codec, OutgoingTrack
from protocol.token import VideoGrant
from sfu import transport
from sfu.endpoint import Endpoint
from sfu.events import EventBus, EventKind, RoomEvent
from sfu.ice import IceRegistry, UdpMux
from sfu.limits import MAX_TRACKS_PER_PARTICIPANT, LimitExceededError, Limits
from sfu.participant import Participant, ParticipantState
from sfu.participant_api import JoinParams
from sfu.quality import QualityScorer, Window
from sfu.receiver import TrackReceiver
from sfu.room import UPDATE_BATCH_S, Room, RoomSettings
from sfu.rtc_adapter import ConnectionState, DataChannel
from sfu.speakers import AudioLevel
from sfu.transport import NegotiationState
from tests.fakes import FakeChannel, FakePeerConnection


class RecordingSink:
    def __init__(self) -> None:
        self.responses: list[rtc.SignalResponse] = []
        self.closed = False

    def send(self, response: rtc.SignalResponse) -> None:
        self.responses.append(response)

    def close(self) -> None:
        self.closed = True

    def of(self, kind: str) -> list[rtc.SignalResponse]:
        return [r for r in self.responses if r.WhichOneof("message") == kind]


def _participant(
    room: Room,
    identity: str,
    *,
    hidden: bool = False,
    can_publish_data: bool = True,
    single_pc: bool = False,
    kind: models.ParticipantInfo.Kind = models.ParticipantInfo.Kind.STANDARD,
) -> tuple[Participant, RecordingSink]:
    sink = RecordingSink()
    grant = VideoGrant(
        room_join=True, room=room.name, hidden=hidden, can_publish_data=can_publish_data
    )
    params = JoinParams(identity=identity, grant=grant, protocol=15, single_pc=single_pc, kind=kind)
    participant = Participant(
        sid=f"PA_{identity}",
        params=params,
        room_name=room.name,
        sink=sink,
        listener=room,
        endpoint=Endpoint(IceRegistry(), UdpMux(IceRegistry()), 9, 0, ("127.0.0.1",)),
        connect=FakePeerConnection,
    )
    return participant, sink


async def _join(room: Room, identity: str, **kwargs: Any) -> tuple[Participant, RecordingSink]:
    participant, sink = _participant(room, identity, **kwargs)
    await room.join(participant, rtc.JoinResponse())
    return participant, sink


def _room(**settings: Any) -> Room:
    return Room(name="r", sid="RM_test", settings=RoomSettings(**settings), now=0.0)


async def test_join_response_first_then_others_told() -> None:
    room = _room()
    _, alice_sink = await _join(room, "alice")
    bob, bob_sink = await _join(room, "bob")
    first = bob_sink.responses[0]
    assert first.WhichOneof("message") == "join"
    assert first.join.room.sid == "RM_test"
    assert first.join.participant.identity == "bob"
    assert [p.identity for p in first.join.other_participants] == ["alice"]
    updates = [p for r in alice_sink.of("update") for p in r.update.participants]
    assert any(p.identity == "bob" for p in updates)
    assert bob.state is ParticipantState.JOINED
    await room.close(models.DisconnectReason.ROOM_DELETED)
    assert alice_sink.of("leave")[0].leave.reason == models.DisconnectReason.ROOM_DELETED


async def test_hidden_participants_are_not_shown() -> None:
    room = _room()
    _, watcher_sink = await _join(room, "watcher")
    _, ghost_sink = await _join(room, "ghost", hidden=True)
    seen = [p.identity for r in watcher_sink.of("update") for p in r.update.participants]
    assert "ghost" not in seen
    assert [p.identity for p in ghost_sink.responses[0].join.other_participants] == ["watcher"]
    assert room.to_proto().num_participants == 1
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_duplicate_identity_replaces_the_old_session() -> None:
    room = _room()
    old, old_sink = await _join(room, "dup")
    new, _ = await _join(room, "dup")
    assert room.participants["dup"] is new
    assert old.is_closed
    assert old_sink.of("leave")[0].leave.reason == models.DisconnectReason.DUPLICATE_IDENTITY
    assert old_sink.closed
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_max_participants() -> None:
    room = _room(max_participants=1)
    await _join(room, "one")
    assert room.is_full("two")
    assert not room.is_full("one")
    await room.close(models.DisconnectReason.ROOM_DELETED)


def _record(into: list[tuple[bytes, bool]], payload: bytes, *, reliable: bool) -> None:
    into.append((payload, reliable))


async def test_data_routing_rules() -> None:
    room = _room()
    sender, _ = await _join(room, "sender")
    others = {name: await _join(room, name) for name in ("a", "b")}
    sent: dict[str, list[tuple[bytes, bool]]] = {"sender": [], "a": [], "b": []}
    for participant in [sender, *(p for p, _ in others.values())]:
        participant.send_data = partial(_record, sent[participant.identity])  # type: ignore[method-assign]
    packet = models.DataPacket(
        participant_identity="spoofed",
        user=models.UserPacket(payload=b"x", topic="t"),
        destination_identities=["b"],
    )
    room.on_participant_data(sender, packet, reliable=False)
    assert sent["a"] == [] and sent["sender"] == []
    delivered = models.DataPacket()
    delivered.ParseFromString(sent["b"][0][0])
    assert sent["b"][0][1] is False
    assert delivered.participant_identity == "sender"
    assert delivered.participant_sid == "PA_sender"
    assert delivered.user.participant_identity == "sender"
    assert delivered.kind == models.DataPacket.Kind.LOSSY, "the channel it came on decides"
    room.on_participant_data(
        sender, models.DataPacket(metrics=metrics.MetricsBatch()), reliable=True
    )
    assert len(sent["a"]) == 0, "metrics are never relayed"
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_data_without_permission_or_stale_sequence_is_dropped() -> None:
    room = _room()
    muted, _ = await _join(room, "muted", can_publish_data=False)
    talker, _ = await _join(room, "talker")
    received: list[models.DataPacket] = []
    room.on_participant_data = (  # type: ignore[method-assign]
        lambda participant, packet, *, reliable: received.append(packet)
    )
    muted._on_data(
        models.DataPacket(user=models.UserPacket(payload=b"x")).SerializeToString(), reliable=True
    )
    assert received == []
    for sequence in (1, 2, 2, 1, 3):
        talker._on_data(models.DataPacket(sequence=sequence).SerializeToString(), reliable=True)
    assert [p.sequence for p in received] == [1, 2, 3]
    talker._on_data(b"\xff\xff garbage", reliable=True)
    assert len(received) == 3
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_metadata_update_and_attribute_deletion() -> None:
    room = _room()
    editor, editor_sink = await _join(room, "editor")
    version = editor.version
    update = rtc.UpdateParticipantMetadata(metadata="m", name="N", attributes={"a": "1", "b": "2"})
    room.update_participant_metadata(editor, update)
    room.update_participant_metadata(editor, rtc.UpdateParticipantMetadata(attributes={"a": ""}))
    await asyncio.sleep(UPDATE_BATCH_S + 0.1)
    sent = editor_sink.of("update")[-1].update.participants[0]
    assert (sent.metadata, dict(sent.attributes)) == ("m", {"b": "2"}), "the latest, batched"
    info = editor.to_info()
    assert (info.metadata, info.name, dict(info.attributes)) == ("m", "N", {"b": "2"})
    assert editor.version == version + 2
    versions = [p.version for r in editor_sink.of("update") for p in r.update.participants]
    assert versions == sorted(versions)
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_idle_timeouts() -> None:
    room = _room(empty_timeout=10, departure_timeout=2)
    assert not room.idle_expired(9.0)
    assert room.idle_expired(10.0)
    participant, _ = await _join(room, "p")
    assert not room.idle_expired(100.0)
    await room.remove(participant, models.DisconnectReason.CLIENT_INITIATED)
    left_at = room._last_left_monotonic
    assert left_at is not None
    assert not room.idle_expired(left_at + 1.9)
    assert room.idle_expired(left_at + 2.0)


async def test_failed_primary_connection_removes_the_participant() -> None:
    room = _room()
    _, watcher_sink = await _join(room, "watcher")
    lost, lost_sink = await _join(room, "lost")
    lost._on_primary_state(ConnectionState.FAILED)
    for _ in range(100):
        if lost.is_closed:
            break
        await asyncio.sleep(0.01)
    assert "lost" not in room.participants
    (leave,) = lost_sink.of("leave")
    assert leave.leave.reason == models.DisconnectReason.CONNECTION_TIMEOUT
    assert leave.leave.action == rtc.LeaveRequest.Action.RECONNECT, "the client comes back"
    states = [p.state for r in watcher_sink.of("update") for p in r.update.participants]
    assert models.ParticipantInfo.State.DISCONNECTED in states
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_tracks_added_together_cost_one_offer() -> None:
    room = _room()
    subscriber, sink = await _join(room, "sub")
    await asyncio.sleep(0.05)
    first_offers = len(sink.of("offer"))
    subscriber.subscriber.state = NegotiationState.IDLE  # as if the client had answered
    for _ in range(10):
        subscriber.subscriber.negotiate()
    await asyncio.sleep(0.05)
    assert len(sink.of("offer")) == first_offers + 1
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_server_side_mute_tells_publisher_and_others() -> None:
    room = _room()
    publisher, publisher_sink = await _join(room, "pub")
    _, watcher_sink = await _join(room, "watcher")
    info = publisher.tracks.add(rtc.AddTrackRequest(cid="c", type=models.TrackType.AUDIO), True)
    assert publisher.mute_by_server(info.sid, True) is not None
    (mute,) = publisher_sink.of("mute")
    assert (mute.mute.sid, mute.mute.muted) == (info.sid, True)
    assert watcher_sink.of("update")
    assert publisher.mute_by_server("TR_unknown", True) is None
    await room.close(models.DisconnectReason.ROOM_DELETED)


class EventRecorder:
    def __init__(self) -> None:
        self.events: list[RoomEvent] = []

    def on_room_event(self, event: RoomEvent) -> None:
        self.events.append(event)

    def kinds(self) -> list[tuple[EventKind, str]]:
        return [(e.kind, e.participant.identity if e.participant else "") for e in self.events]


def _observed_room() -> tuple[Room, EventRecorder]:
    bus = EventBus()
    recorder = EventRecorder()
    bus.subscribe(recorder)
    room = Room(name="r", sid="RM_test", settings=RoomSettings(), now=0.0, events=bus)
    return room, recorder


async def test_left_only_after_active_otherwise_connection_aborted() -> None:
    room, recorder = _observed_room()
    never, _ = await _join(room, "never")
    await room.remove(never, models.DisconnectReason.CLIENT_INITIATED)
    active, _ = await _join(room, "active")
    active._on_primary_state(ConnectionState.CONNECTED)
    await room.remove(active, models.DisconnectReason.CLIENT_INITIATED)
    assert recorder.kinds() == [
        (EventKind.PARTICIPANT_CONNECTION_ABORTED, "never"),
        (EventKind.PARTICIPANT_JOINED, "active"),
        (EventKind.PARTICIPANT_LEFT, "active"),
    ]
    left = recorder.events[-1]
    assert left.participant is not None
    assert left.participant.state == models.ParticipantInfo.State.DISCONNECTED
    assert left.room.name == "r"


async def test_a_failing_observer_does_not_affect_the_room() -> None:
    class Broken:
        def on_room_event(self, event: RoomEvent) -> None:
            raise RuntimeError("observer bug")

    bus = EventBus()
    recorder = EventRecorder()
    bus.subscribe(Broken())
    bus.subscribe(recorder)
    room = Room(name="r", sid="RM_test", settings=RoomSettings(), now=0.0, events=bus)
    participant, _ = await _join(room, "p")
    participant._on_primary_state(ConnectionState.CONNECTED)
    assert recorder.kinds() == [(EventKind.PARTICIPANT_JOINED, "p")]
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_revoking_publish_unpublishes_and_reports_each_track() -> None:
    room, recorder = _observed_room()
    publisher, _ = await _join(room, "pub")
    _, watcher_sink = await _join(room, "watcher")
    info = publisher.tracks.add(rtc.AddTrackRequest(cid="c", type=models.TrackType.AUDIO), True)
    publisher.tracks.published[info.sid] = publisher.tracks.pending.pop("c")
    publisher.tracks.add(rtc.AddTrackRequest(cid="later", type=models.TrackType.VIDEO), True)
    room.update_permission(
        publisher, models.ParticipantPermission(can_subscribe=True, can_publish=False)
    )
    assert not publisher.tracks.published and not publisher.tracks.pending
    assert not publisher.grant.can_publish
    assert (EventKind.TRACK_UNPUBLISHED, "pub") in recorder.kinds()
    last_seen = [p for r in watcher_sink.of("update") for p in r.update.participants][-1]
    assert (last_seen.identity, list(last_seen.tracks)) == ("pub", [])
    assert not last_seen.permission.can_publish
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_server_data_reaches_only_its_destinations() -> None:
    room = _room()
    sent: dict[str, list[tuple[bytes, bool]]] = {}
    for name in ("a", "b"):
        participant, _ = await _join(room, name)
        sent[name] = []
        participant.send_data = partial(_record, sent[name])  # type: ignore[method-assign]
    packet = models.DataPacket(
        kind=models.DataPacket.Kind.RELIABLE,
        user=models.UserPacket(payload=b"x", destination_identities=["b"]),
    )
    room.send_server_data(packet, reliable=True)
    assert sent["a"] == []
    delivered = models.DataPacket()
    delivered.ParseFromString(sent["b"][0][0])
    assert (delivered.user.payload, delivered.participant_identity) == (b"x", "")
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_room_metadata_update_is_broadcast() -> None:
    room = _room()
    _, sink = await _join(room, "reader")
    room.update_metadata("topic")
    assert sink.of("room_update")[-1].room_update.room.metadata == "topic"
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_unanswered_offer_makes_the_client_reconnect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # LiveKit's negotiationFailedTimeout: a subscriber that never answers is not left wedged
    # (looking connected while no new track reaches it), it is told to reconnect.
    monkeypatch.setattr(transport, "NEGOTIATION_TIMEOUT_S", 0.05)
    room = _room()
    silent, sink = await _join(room, "silent")
    await asyncio.sleep(0.01)
    assert silent.subscriber.state is NegotiationState.OFFER_SENT
    for _ in range(100):
        if silent.is_closed:
            break
        await asyncio.sleep(0.01)
    assert "silent" not in room.participants
    (leave,) = sink.of("leave")
    assert leave.leave.action == rtc.LeaveRequest.Action.RECONNECT
    assert leave.leave.can_reconnect
    assert leave.leave.reason == models.DisconnectReason.STATE_MISMATCH
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_answered_offer_cancels_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "NEGOTIATION_TIMEOUT_S", 0.05)
    room = _room()
    prompt, sink = await _join(room, "prompt")
    await asyncio.sleep(0.01)
    assert isinstance(prompt.subscriber, transport.SubscriberTransport)
    prompt.subscriber._deadline.cancel()  # what an applied answer does
    prompt.subscriber.state = NegotiationState.IDLE
    await asyncio.sleep(0.1)
    assert not prompt.is_closed and not sink.of("leave")
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_participant_updates_over_the_limits_change_nothing() -> None:
    limits = Limits(max_metadata_size=100, max_attributes_size=50, max_participant_name_length=10)
    room = _room(limits=limits)
    participant, _ = await _join(room, "p")
    _, watcher = await _join(room, "watcher")
    updates = len(watcher.of("update"))
    with pytest.raises(LimitExceededError, match="name length"):
        room.update_participant(participant, "n" * 11, "", {})
    with pytest.raises(LimitExceededError, match="metadata size"):
        room.update_participant(participant, "", "m" * 101, {})
    room.update_participant(participant, "", "", {"a": "x" * 20})
    # Small updates must not add up past the limit: the attributes they leave are checked.
    with pytest.raises(LimitExceededError, match="attributes size"):
        room.update_participant(participant, "", "", {"b": "y" * 30})
    room.update_participant(participant, "", "", {"a": "", "b": "y" * 30})  # "a" deleted
    assert participant.attributes == {"b": "y" * 30}
    assert participant.name == "" and participant.metadata == ""
    await asyncio.sleep(UPDATE_BATCH_S + 0.1)
    # Accepted changes of a non-publisher go out batched: one update with the latest info.
    assert len(watcher.of("update")) == updates + 1
    assert dict(watcher.of("update")[-1].update.participants[0].attributes) == {"b": "y" * 30}
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_track_requests_over_the_limits_are_refused() -> None:
    room = _room()
    publisher, sink = await _join(room, "pub")
    publisher.handle_add_track(rtc.AddTrackRequest(cid="long", name="n" * 300))
    publisher.handle_add_track(
        rtc.AddTrackRequest(cid="big", layers=[models.VideoLayer(width=1)] * 5000)
    )
    refused = sink.of("request_response")
    assert [r.request_response.reason for r in refused] == [rtc.RequestResponse.LIMIT_EXCEEDED] * 2
    assert len(refused[0].request_response.add_track.name) == 0, "the long name is not echoed"
    audio = models.TrackType.AUDIO
    for index in range(40):
        publisher.handle_add_track(rtc.AddTrackRequest(cid=f"c{index}", type=audio))
    assert len(sink.of("track_published")) == 20, "LiveKit's limit of pending tracks"
    tracks = publisher.tracks
    tracks.published.update({t.sid: t for t in tracks.pending.values()})  # as if negotiated
    tracks.pending.clear()
    for index in range(15):
        publisher.handle_add_track(rtc.AddTrackRequest(cid=f"more{index}", type=audio))
    assert len(tracks.published) + len(tracks.pending) == MAX_TRACKS_PER_PARTICIPANT
    assert sink.of("request_response")[-1].request_response.message == "too many tracks"
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_revoked_publish_right_tells_the_publisher_which_tracks_went() -> None:
    room = _room()
    publisher, sink = await _join(room, "pub")
    info = publisher.tracks.add(rtc.AddTrackRequest(cid="c", type=models.TrackType.AUDIO), True)
    track = publisher.tracks.pending.pop("c")
    publisher.tracks.published[info.sid] = track  # as if negotiated
    room.update_permission(publisher, models.ParticipantPermission(can_subscribe=True))
    (unpublished,) = sink.of("track_unpublished")
    assert unpublished.track_unpublished.track_sid == info.sid
    assert not publisher.tracks.published
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_resume_sends_the_room_again_and_restarts_subscriber_ice() -> None:
    room = _room()
    resumed, sink = await _join(room, "resumed")
    await _join(room, "other")
    await asyncio.sleep(0.05)
    first_offer = sink.of("offer")[0].offer.sdp
    resumed.subscriber.state = NegotiationState.IDLE  # as if the client had answered
    resumed.detach_signal()
    await room.remove(room.participants["other"], models.DisconnectReason.CLIENT_INITIATED)
    fresh = RecordingSink()
    lost_at = resumed.attach_signal(fresh)
    room.resume(resumed, rtc.ReconnectResponse(), lost_at)
    await asyncio.sleep(0.05)
    kinds = [r.WhichOneof("message") for r in fresh.responses]
    assert kinds[:4] == ["reconnect", "update", "update", "room_update"], kinds
    gone = fresh.responses[1].update.participants
    assert [(p.identity, p.state) for p in gone] == [
        ("other", models.ParticipantInfo.State.DISCONNECTED)
    ]
    (offer,) = fresh.of("offer")
    ufrag = [line for line in offer.offer.sdp.splitlines() if line.startswith("a=ice-ufrag")]
    assert ufrag and ufrag[0] not in first_offer, "an ICE restart offer"
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_single_pc_data_waits_for_the_clients_own_channel() -> None:
    """A single-PC client opens the data channels the server sends on; reliable data for it
    that arrives first is kept and sent once its ``_reliable`` channel opens, in order."""
    room = _room()
    sender, _ = await _join(room, "sender")
    receiver, _ = await _join(room, "receiver", single_pc=True)
    pc = receiver.publisher.pc
    assert isinstance(pc, FakePeerConnection) and pc.on_data_channel is not None
    for index in range(3):
        packet = models.DataPacket(user=models.UserPacket(payload=f"m{index}".encode()))
        room.on_participant_data(sender, packet, reliable=True)
    channel = FakeChannel("_reliable", reliable=True)
    pc.on_data_channel(cast(DataChannel, channel))
    payloads = [models.DataPacket.FromString(raw).user.payload for raw in channel.sent]
    assert payloads == [b"m0", b"m1", b"m2"]
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_single_pc_offer_that_cannot_be_answered_does_not_wedge_negotiation() -> None:
    """A client offer refused as bad input leaves the single-PC subscriber ready to ask for
    the next one (it would otherwise wait for ever in the answering state)."""
    room = _room()
    participant, sink = await _join(room, "broken", single_pc=True)
    pc = participant.publisher.pc
    assert isinstance(pc, FakePeerConnection)

    async def refuse(*_: object) -> str:
        raise ValueError("SDP has no usable m= section")

    pc.answer = refuse  # type: ignore[method-assign, assignment]
    with pytest.raises(ValueError):
        await participant.handle_offer(rtc.SessionDescription(type="offer", sdp="v=0\r\n", id=1))
    assert participant.subscriber.state.value == "idle"
    participant.subscriber.negotiate()
    await asyncio.sleep(0.3)
    assert sink.of("media_sections_requirement"), "it asks for offers again"
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_single_pc_answer_from_the_client_is_refused_not_applied() -> None:
    """The server never offers on a single PC: a client's answer there is bad input, refused
    with a ValueError (the session logs it and carries on)."""
    room = _room()
    participant, _ = await _join(room, "answers", single_pc=True)
    answer = rtc.SessionDescription(type="answer", sdp="v=0\r\n", id=3)
    with pytest.raises(ValueError, match="never offers"):
        await participant.handle_answer(answer)
    assert not participant.is_closed
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_speakers_go_to_the_speaker_and_its_subscribers_only() -> None:
    room = _room()
    alice, alice_sink = await _join(room, "alice")
    bob, bob_sink = await _join(room, "bob")
    _, carol_sink = await _join(room, "carol")
    info = alice.tracks.add(rtc.AddTrackRequest(cid="mic", type=models.TrackType.AUDIO), True)
    track = alice.tracks.pending.pop("mic")
    track.receiver = TrackReceiver(Codec(111, "audio/opus", 48000), 1234, lambda _: None)
    track.receiver.watch_audio_level(AudioLevel(AudioConfig()), 1)
    alice.tracks.published[info.sid] = track  # as if negotiated
    bob.tracks.downtracks[info.sid] = cast(Any, object())  # as if subscribed
    level = track.receiver.audio_level
    assert level is not None
    for index in range(20):
        level.observe(8, index * 960)  # 400 ms of loud speech
    room.update_speakers()
    for sink in (alice_sink, bob_sink):
        (update,) = sink.of("speakers_changed")
        (speaker,) = update.speakers_changed.speakers
        assert (speaker.sid, speaker.active) == (alice.sid, True)
    assert not carol_sink.of("speakers_changed"), "carol does not subscribe to alice"
    room.update_speakers()
    room.update_speakers()
    stopped = bob_sink.of("speakers_changed")[-1].speakers_changed.speakers
    assert [(s.sid, s.active, s.level) for s in stopped] == [(alice.sid, False, 0.0)]
    del bob.tracks.downtracks[info.sid]
    await room.close(models.DisconnectReason.ROOM_DELETED)


class _Subscribed:
    """Stands in for a downtrack that carried nothing yet."""

    quality = QualityScorer("audio")
    outgoing = OutgoingTrack("audio", "1", (), (), "s", "t", 1)

    def quality_window(self) -> Window:
        return Window(packets=0, lost=0)


async def test_connection_quality_goes_to_each_and_its_publishers_when_it_changes() -> None:
    room = _room()
    alice, alice_sink = await _join(room, "alice")
    bob, bob_sink = await _join(room, "bob")
    info = alice.tracks.add(rtc.AddTrackRequest(cid="mic", type=models.TrackType.AUDIO), True)
    track = alice.tracks.pending.pop("mic")
    track.receiver = TrackReceiver(Codec(111, "audio/opus", 48000), 1234, lambda _: None)
    alice.tracks.published[info.sid] = track  # as if negotiated
    bob.tracks.downtracks[info.sid] = cast(Any, _Subscribed())
    room.tick(0.0)
    (to_alice,) = alice_sink.of("connection_quality")
    assert [u.participant_sid for u in to_alice.connection_quality.updates] == [alice.sid]
    (to_bob,) = bob_sink.of("connection_quality")
    assert {u.participant_sid for u in to_bob.connection_quality.updates} == {bob.sid, alice.sid}
    assert all(
        u.quality == models.ConnectionQuality.EXCELLENT for u in to_bob.connection_quality.updates
    )
    del bob.tracks.downtracks[info.sid]
    room.tick(10.0)
    assert len(bob_sink.of("connection_quality")) == 1, "nothing changed: nothing sent"
    await room.close(models.DisconnectReason.ROOM_DELETED)


async def test_agents_neither_fill_a_room_nor_keep_it_open() -> None:
    room = _room(max_participants=1, departure_timeout=20)
    user, _ = await _join(room, "user")
    agent_kind = models.ParticipantInfo.Kind.AGENT
    assert not room.is_full("agent-1", dependent=True), "an agent joins a full room"
    await _join(room, "agent-1", kind=agent_kind)
    assert room.to_proto().num_participants == 1, "LiveKit does not count agents"
    assert room.is_full("another-user")
    await room.remove(user, models.DisconnectReason.CLIENT_INITIATED)
    left_at = time.monotonic()
    assert not room.idle_expired(left_at + 19)
    assert room.idle_expired(left_at + 21), "only an agent left: the departure timeout runs"
    await room.close(models.DisconnectReason.ROOM_DELETED)
