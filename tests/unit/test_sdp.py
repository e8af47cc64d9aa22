"""SDP parsing and the descriptions we write, against offers captured from the real SDK."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol import sdp, sdp_media

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
PARAMS = sdp.TransportParams(
    ice_ufrag="uFrag123",
    ice_pwd="passwordpasswordpassword",
    fingerprints=(("sha-256", "AA:BB"),),
    candidates=("candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host generation 0",),
    setup="passive",
)


def _vector(name: str) -> str:
    return (VECTORS / name).read_bytes().decode()


@pytest.mark.parametrize("name", ["sdk_publisher_offer.sdp", "sdk_subscriber_answer.sdp"])
def test_round_trip_keeps_every_line(name: str) -> None:
    text = _vector(name)
    assert sdp.serialize(sdp.parse(text)) == text


def test_sdk_offer_parsed() -> None:
    offer = sdp.parse(_vector("sdk_publisher_offer.sdp"))
    assert [s.mid for s in offer.media] == ["7", "8", "9", "10", "11", "12", "13"]
    assert [s.kind for s in offer.media][-1] == "application"
    audio = offer.media[0]
    assert audio.formats[0] == "111"
    assert any(v.startswith("111 opus/48000") for v in audio.values("rtpmap"))
    assert audio.values("extmap"), "header extension ids are kept"
    ufrag, pwd, fingerprints, setup = sdp.remote_transport(offer) or ("", "", [], "")
    assert ufrag and pwd and fingerprints[0].startswith("sha-256 ")
    assert setup == "actpass"


def test_answer_to_sdk_offer() -> None:
    offer = sdp.parse(_vector("sdk_publisher_offer.sdp"))
    text = sdp_media.answer(offer, PARAMS, ["audio/opus"], session_id=1, address="127.0.0.1")
    answer = sdp.parse(text)
    assert [s.mid for s in answer.media] == [s.mid for s in offer.media]
    assert [s.kind for s in answer.media] == [s.kind for s in offer.media]
    # Video is not enabled here, so rejected; the SDK's recvonly audio is answered "inactive".
    assert [s.rejected for s in answer.media] == [False] * 3 + [True] * 3 + [False]
    assert all(s.has("inactive") for s in answer.media[:3])
    data = answer.media[-1]
    assert not data.rejected
    assert data.value("setup") == "passive"
    assert data.value("sctp-port") == "5000"
    # Candidates stand in the BUNDLE-tagged section, the first accepted one (mid 7).
    assert answer.media[0].values("candidate") == [PARAMS.candidates[0].removeprefix("candidate:")]
    assert not data.values("candidate")
    assert sdp.bundle_tag(answer) == ("7", 0)
    assert answer.value("group") == "BUNDLE 7 8 9 13"
    assert answer.value("ice-lite") == ""


def test_data_offer() -> None:
    text = sdp_media.subscriber_offer((), PARAMS, session_id=7, version=3, address="10.0.0.1")
    offer = sdp.parse(text)
    assert offer.session_lines[1] == "o=- 7 3 IN IP4 10.0.0.1"
    (section,) = offer.media
    assert (section.kind, section.mid, section.value("ice-ufrag")) == (
        "application",
        "0",
        "uFrag123",
    )
    assert section.has("end-of-candidates")


@pytest.mark.parametrize(
    "text",
    ["", "garbage", "x=1\r\n", "v=0\r\nm=audio\r\n", "v=0\r\nm=audio nine RTP/AVP 0\r\n"],
)
def test_bad_sdp(text: str) -> None:
    with pytest.raises(ValueError):
        sdp.parse(text)


def test_missing_credentials() -> None:
    description = sdp.parse("v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n")
    with pytest.raises(ValueError, match="ice-ufrag"):
        sdp.remote_transport(description)


def test_chromium_simulcast_offer() -> None:
    text = _vector("chromium_simulcast_offer.sdp")
    offer = sdp.parse(text)
    assert sdp.serialize(offer) == text
    video = offer.media[1]
    assert video.values("rid") == ["q send", "h send", "f send"]
    assert video.value("simulcast") == "send q;h;f"
    assert (video.value("msid") or "").startswith("- ")
    answer = sdp.parse(
        sdp_media.answer(offer, PARAMS, ["audio/opus", "video/VP8"], session_id=1, address="x")
    )
    answered = answer.media[1]
    assert answered.has("recvonly")
    assert answered.values("rid") == ["q recv", "h recv", "f recv"]
    assert answered.value("simulcast") == "recv q;h;f"
    assert answer.value("group") == "BUNDLE 0 1 2"


def test_rejected_section_keeps_the_rtpmap_of_its_format() -> None:
    # aiortc refuses a description whose payload type has no rtpmap (issue 14: a re-offer with
    # a removed section); browsers keep it, so do we.
    offer = sdp.parse(_vector("sdk_publisher_offer.sdp"))
    answer = sdp.parse(
        sdp_media.answer(offer, PARAMS, ["audio/opus"], session_id=1, address="127.0.0.1")
    )
    for offered, answered in zip(offer.media, answer.media, strict=True):
        if not answered.rejected:
            continue
        (kept,) = answered.formats
        assert kept == offered.formats[0]
        assert [v for v in answered.values("rtpmap") if v.split(" ")[0] == kept]


def test_answer_leads_with_the_codec_the_publisher_asked_for() -> None:
    # The publisher sends the first codec of the answer: livekit-client asks for H.264 (or RED
    # audio) in AddTrackRequest, not by ordering its offer (Chromium offers VP8 first).
    offer = sdp.parse(_vector("chromium_simulcast_offer.sdp"))
    audio_id, video_id = (sdp_media.msid_track_id(s) for s in offer.media[:2])
    enabled = ["audio/opus", "audio/red", "video/VP8", "video/H264", "video/rtx"]
    preferred = {video_id: ["video/H264"], audio_id: ["audio/red"]}
    text = sdp_media.answer(offer, PARAMS, enabled, session_id=1, address="x", preferred=preferred)
    answer = sdp.parse(text)
    audio = sdp_media.offered_codecs(answer.media[0])
    assert [c.name for c in audio][:2] == ["red", "opus"]
    video = sdp_media.offered_codecs(answer.media[1])
    assert video[0].name == "H264"
    assert video[1].name == "rtx" and video[1].apt == video[0].payload_type
    streams = sdp_media.incoming_streams(offer, answer)
    assert [s.codec.name for s in streams] == ["opus", "H264"]
    assert streams[0].red is not None
    default = sdp.parse(sdp_media.answer(offer, PARAMS, enabled, session_id=1, address="x"))
    assert sdp_media.offered_codecs(default.media[1])[0].name == "VP8", "the offer's order"
