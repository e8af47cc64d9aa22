"""Single peer connection mode without a network: section placement, codec matching, the
requirement state machine and join-request decoding."""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
import struct
from typing import cast

import pytest
from livekit.protocol import models, rtc

from protocol import rtcp, rtp, sdp
from protocol.sdp_media import Codec
from sfu.counters import MediaCounters
from sfu.receiver import PublishedTrack, TrackReceiver
from sfu.rtc_adapter import PeerConnection
from sfu.single_pc import (
    Placement,
    RequirementState,
    SectionPlan,
    SinglePcSubscriber,
    matching_codecs,
    receive_sections,
)
from sfu.tasks import TaskSet
from sfu.tracks import ParticipantTracks
from sfu.transport import SubscriberTransport
from signaling.join_request import MAX_JOIN_REQUEST_BYTES, decode_join_request
from tests.fakes import FakePc, FakeSubscriber

OPUS = Codec(111, "audio/opus", 48000, 2, "minptime=10;useinbandfec=1")
RED = Codec(63, "audio/red", 48000, 2, "111/111")
VP8 = Codec(96, "video/VP8", 90000)
H264_BASELINE = Codec(102, "video/H264", 90000, 0, "packetization-mode=1;profile-level-id=42e01f")
H264_HIGH = Codec(104, "video/H264", 90000, 0, "packetization-mode=1;profile-level-id=640032")

AUDIO_SECTION = """m=audio 9 UDP/TLS/RTP/SAVPF 111 63
a=mid:{mid}
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a={direction}
a=rtpmap:111 opus/48000/2
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
"""
VIDEO_SECTION = """m=video 9 UDP/TLS/RTP/SAVPF 96
a=mid:{mid}
a={direction}
a=rtpmap:96 VP8/90000
"""
HEAD = """v=0
o=- 1 2 IN IP4 127.0.0.1
s=-
t=0 0
"""


def _offer(*sections: tuple[str, str, str]) -> sdp.SessionDescription:
    """An offer of (kind, mid, direction) sections."""
    body = [
        (AUDIO_SECTION if kind == "audio" else VIDEO_SECTION).format(mid=mid, direction=direction)
        for kind, mid, direction in sections
    ]
    return sdp.parse(HEAD + "".join(body))


def _track(sid: str, codec: Codec, red: Codec | None = None) -> PublishedTrack:
    kind = models.TrackType.AUDIO if codec.mime.startswith("audio") else models.TrackType.VIDEO
    receiver = TrackReceiver(codec, 1, lambda _: None, red=red)
    return PublishedTrack(info=models.TrackInfo(sid=sid, type=kind), receiver=receiver)


def test_receive_sections_are_the_recvonly_ones_with_the_clients_mid_extension() -> None:
    offer = _offer(
        ("audio", "0", "sendonly"), ("audio", "1", "recvonly"), ("video", "2", "recvonly")
    )
    sections = receive_sections(offer)
    assert [(s.mid, s.kind, s.mid_extension) for s in sections] == [
        ("1", "audio", 4),
        ("2", "video", 0),
    ]


def test_matching_codecs_use_the_clients_numbers_and_decoder_parameters() -> None:
    client_opus = Codec(109, "audio/opus", 48000, 2)
    assert matching_codecs([client_opus], OPUS, None) == (client_opus,)
    # RED passes only when the client numbers Opus as the publisher does (blocks keep the PT).
    assert matching_codecs([OPUS, RED], OPUS, RED) == (RED, OPUS)
    red_109 = Codec(63, "audio/red", 48000, 2, "109/109")
    assert matching_codecs([client_opus, red_109], OPUS, RED) == (client_opus,)
    assert matching_codecs([H264_BASELINE, H264_HIGH], H264_HIGH, None) == (H264_HIGH,)
    assert matching_codecs([VP8], OPUS, None) is None


def test_plan_places_waiting_tracks_and_counts_what_is_missing() -> None:
    plan = SectionPlan()
    audio = [_track(f"TR_a{i}", OPUS) for i in range(4)]
    for track in audio:
        plan.want(Placement("PA_x", track))
    offer = _offer(*(("audio", str(i), "recvonly") for i in range(3)))
    lost, placed, refused = plan.apply_offer(offer)
    assert not lost and not refused
    assert [(p.section.mid, p.placement.track.sid) for p in placed] == [
        ("0", "TR_a0"),
        ("1", "TR_a1"),
        ("2", "TR_a2"),
    ]
    plan.answered()
    assert plan.sections_needed() == (1, 0)
    # The client adds the section it was asked for.
    offer = _offer(*(("audio", str(i), "recvonly") for i in range(4)))
    _, placed, _ = plan.apply_offer(offer)
    assert [(p.section.mid, p.placement.track.sid) for p in placed] == [("3", "TR_a3")]
    assert plan.sections_needed() == (0, 0)


def test_a_released_section_rests_for_one_answer() -> None:
    """A browser fires no new track event when a receiving section changes msid: the section
    goes inactive in one answer before it carries another track."""
    plan = SectionPlan()
    first, second = _track("TR_1", OPUS), _track("TR_2", OPUS)
    plan.want(Placement("PA_x", first))
    offer = _offer(("audio", "0", "recvonly"))
    plan.apply_offer(offer)
    plan.answered()
    plan.release("0")
    plan.want(Placement("PA_x", second))
    _, placed, _ = plan.apply_offer(offer)
    assert not placed and plan.assigned == {}
    assert plan.sections_needed() == (1, 0)
    plan.answered()
    _, placed, _ = plan.apply_offer(offer)
    assert [p.placement.track.sid for p in placed] == ["TR_2"]


def test_a_section_the_client_drops_sends_its_track_back_to_waiting() -> None:
    plan = SectionPlan()
    track = _track("TR_v", VP8)
    plan.want(Placement("PA_x", track))
    plan.apply_offer(_offer(("video", "5", "recvonly")))
    lost, placed, _ = plan.apply_offer(_offer(("video", "6", "recvonly")))
    assert [p.track.sid for p in lost] == ["TR_v"]
    assert [p.section.mid for p in placed] == ["6"]


def test_a_track_the_client_cannot_decode_is_refused_not_asked_for_forever() -> None:
    plan = SectionPlan()
    plan.want(Placement("PA_x", _track("TR_h", H264_HIGH)))
    _, placed, refused = plan.apply_offer(_offer(("video", "0", "recvonly")))
    assert not placed and [p.track.sid for p in refused] == ["TR_h"]
    assert plan.sections_needed() == (0, 0)
    assert plan.forget("TR_h") is False


def test_requirements_are_debounced_and_time_out() -> None:
    async def scenario() -> None:
        sent: list[tuple[int, int]] = []
        failed: list[bool] = []
        log = logging.LoggerAdapter(logging.getLogger("test"), {})
        tasks = TaskSet(log)
        subscriber = SinglePcSubscriber(
            lambda a, v: sent.append((a, v)), lambda: (1, 2), tasks, log
        )
        subscriber.on_negotiation_failed = lambda: failed.append(True)
        subscriber.negotiate()
        subscriber.negotiate()  # joins the scheduled one
        await asyncio.sleep(0.3)
        assert sent == [(1, 2)]
        assert subscriber.state is RequirementState.REQUESTED
        subscriber.negotiate()  # waits for the offer asked for
        subscriber.offer_received()
        assert subscriber.state.value == "answering"
        subscriber.offer_answered()  # needs remain: asks again
        await asyncio.sleep(0.3)
        assert sent == [(1, 2), (1, 2)]
        subscriber.resend_outstanding()
        assert sent[-1] == (1, 2) and len(sent) == 3
        await subscriber.close()
        await tasks.close()
        assert not failed

    asyncio.run(scenario())


def _encoded(payload: bytes, compression: int) -> str:
    wrapped = rtc.WrappedJoinRequest(join_request=payload)
    wrapped.compression = compression  # type: ignore[assignment]
    return base64.urlsafe_b64encode(wrapped.SerializeToString()).decode().rstrip("=")


def test_join_request_plain_and_gzipped() -> None:
    join = rtc.JoinRequest(metadata="m", reconnect=True, participant_sid="PA_1")
    raw = join.SerializeToString()
    for encoded in (
        _encoded(raw, rtc.WrappedJoinRequest.Compression.NONE),
        _encoded(gzip.compress(raw), rtc.WrappedJoinRequest.Compression.GZIP),
    ):
        assert decode_join_request(encoded) == join


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        ("not base64!", "base64url"),
        (_encoded(b"\xff\xff", rtc.WrappedJoinRequest.Compression.NONE), "JoinRequest"),
        (_encoded(b"not gzip", rtc.WrappedJoinRequest.Compression.GZIP), "gzip"),
        (
            _encoded(
                gzip.compress(b"\0" * (MAX_JOIN_REQUEST_BYTES + 1)),
                rtc.WrappedJoinRequest.Compression.GZIP,
            ),
            "too large",
        ),
    ],
)
def test_join_request_garbage_is_refused(encoded: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_join_request(encoded)


def _vp8_packet(sequence: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, sequence, sequence * 3000, 5555) + b"frame"


CLIENT_OFFER = (
    HEAD
    + """m=video 9 UDP/TLS/RTP/SAVPF 98
a=mid:3
a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid
a=recvonly
a=rtpmap:98 VP8/90000
a=rtcp-fb:98 nack
"""
)


def test_one_pc_tracks_use_the_clients_section_numbers_and_share_its_rtcp() -> None:
    """A subscription waits for the client's offer, goes out on its receive-only section with
    its payload type and mid extension id, and the subscriber's NACKs arrive on the same PC."""
    pc = FakePc()
    tracks = ParticipantTracks(cast(PeerConnection, pc), None, MediaCounters())
    track = _track("TR_v", VP8)
    assert track.receiver is not None
    assert tracks.subscribe("PA_pub", track, "PA_sub")
    assert tracks.sections_needed() == (0, 1)
    refused: list[str] = []
    tracks.on_refused = refused.append
    outgoing = tracks.place(sdp.parse(CLIENT_OFFER), "PA_sub")
    assert not refused and list(outgoing) == ["3"]
    sent_section = outgoing["3"]
    assert (sent_section.codecs[0].payload_type, sent_section.stream_id) == (98, "PA_pub|TR_v")
    track.receiver.on_packet(_vp8_packet(1), now=0.0)
    assert not pc.sent, "nothing before our answer is out"
    tracks.answered()
    for sequence in (2, 3):
        track.receiver.on_packet(_vp8_packet(sequence), now=0.0)
    first = pc.sent[0]
    assert rtp.payload_type(first) == 98
    extension, header, _ = rtp.header_end(first)
    assert list(rtp.extensions(first, extension, header)) == [(9, b"3")]
    assert pc.on_rtcp is not None
    pc.on_rtcp(rtcp.nack(1, rtp.ssrc(first), [rtp.sequence_number(first)]))
    assert len(pc.sent) == 3, "the NACKed packet was sent again"
    assert tracks.unsubscribe("TR_v", "PA_sub", track)
    assert not track.receiver.downtracks


def test_a_two_pc_client_refusing_a_section_is_told_codec_unsupported() -> None:
    subscriber = FakeSubscriber()
    tracks = ParticipantTracks(
        cast(PeerConnection, FakePc()), cast(SubscriberTransport, subscriber), MediaCounters()
    )
    refused: list[str] = []
    tracks.on_refused = refused.append
    assert tracks.subscribe("PA_pub", _track("TR_h", H264_HIGH), "PA_sub")
    rejected = HEAD + "m=video 0 UDP/TLS/RTP/SAVPF 104\na=mid:1\na=rtpmap:104 H264/90000\n"
    assert subscriber.on_answer is not None
    subscriber.on_answer(rejected)
    subscriber.on_answer(rejected)
    assert refused == ["TR_h"]
