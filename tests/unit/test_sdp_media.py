"""Codec and header-extension negotiation against the real SDK's offer."""

from __future__ import annotations

from pathlib import Path

from protocol import sdp, sdp_media

OFFER = sdp.parse(
    (Path(__file__).resolve().parents[1] / "vectors/sdk_publisher_offer.sdp").read_bytes().decode()
)
AUDIO, VIDEO = OFFER.media[0], OFFER.media[3]
PARAMS = sdp.TransportParams("u", "p" * 24, (("sha-256", "AA"),), (), "passive")


def test_offered_codecs_read_rtpmap_fmtp_and_feedback() -> None:
    opus = sdp_media.offered_codecs(AUDIO)[0]
    assert (opus.payload_type, opus.mime, opus.clock_rate, opus.channels) == (
        111,
        "audio/opus",
        48000,
        2,
    )
    assert "useinbandfec=1" in opus.fmtp
    assert "transport-cc" in opus.rtcp_fb


def test_rtx_follows_its_primary_and_red_its_inner_codec() -> None:
    video = sdp_media.select_codecs(sdp_media.offered_codecs(VIDEO), ["video/VP8", "video/rtx"])
    names = [(c.payload_type, c.name, c.apt) for c in video]
    assert names == [(96, "VP8", None), (97, "rtx", 96)]
    without_rtx = sdp_media.select_codecs(sdp_media.offered_codecs(VIDEO), ["video/VP8"])
    assert [c.name for c in without_rtx] == ["VP8"]
    audio = sdp_media.select_codecs(sdp_media.offered_codecs(AUDIO), ["audio/opus", "audio/red"])
    assert [c.name for c in audio] == ["opus", "red"]
    no_opus = sdp_media.select_codecs(sdp_media.offered_codecs(AUDIO), ["audio/red"])
    assert no_opus == []


def test_extensions_keep_the_offerers_ids_and_only_ours() -> None:
    audio = dict(sdp_media.select_extensions(AUDIO))
    assert audio[1] == "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
    video = [uri for _, uri in sdp_media.select_extensions(VIDEO)]
    assert "urn:ietf:params:rtp-hdrext:ssrc-audio-level" not in video
    assert "urn:ietf:params:rtp-hdrext:sdes:mid" in video


def test_send_only_offer_answered_receive_only() -> None:
    sending = sdp.MediaSection(
        kind=AUDIO.kind,
        port=9,
        protocol=AUDIO.protocol,
        formats=AUDIO.formats,
        attributes=[(k, v) for k, v in AUDIO.attributes if k != "recvonly"] + [("sendonly", "")],
    )
    section = sdp_media.answer_media_section(sending, PARAMS, ["audio/opus"], "5")
    assert section is not None
    assert section.has("recvonly") and section.mid == "5"
    assert section.formats == ["111"]
    assert sdp_media.answer_media_section(sending, PARAMS, ["video/VP8"], "5") is None


def test_subscriber_offer_with_tracks() -> None:
    opus = sdp_media.offered_codecs(AUDIO)[0]
    vp8, rtx = sdp_media.select_codecs(sdp_media.offered_codecs(VIDEO), ["video/VP8", "video/rtx"])
    tracks = (
        sdp_media.OutgoingTrack(
            "audio", "1", (opus,), ((4, AUDIO_MID_URI),), "PA_pub|TR_a", "TR_a", ssrc=1111
        ),
        sdp_media.OutgoingTrack(
            "video", "2", (vp8, rtx), (), "PA_pub|TR_v", "TR_v", ssrc=2222, rtx_ssrc=3333
        ),
    )
    text = sdp_media.subscriber_offer(tracks, PARAMS, session_id=1, version=4, address="10.0.0.1")
    offer = sdp.parse(text)
    assert offer.value("group") == "BUNDLE 0 1 2"
    data, audio, video = offer.media
    assert data.kind == "application" and data.mid == "0"
    assert audio.has("sendonly") and audio.value("msid") == "PA_pub|TR_a TR_a"
    assert audio.values("ssrc") == ["1111 cname:livekit-py-server", "1111 msid:PA_pub|TR_a TR_a"]
    assert video.value("ssrc-group") == "FID 2222 3333"
    assert video.formats == ["96", "97"]
    assert "97 apt=96" in video.values("fmtp")
    assert sdp.bundle_tag(offer) == ("0", 0)
    assert sdp.serialize(offer) == text


def test_unsubscribed_section_keeps_the_rtpmap_of_its_format() -> None:
    # aiortc 1.16 refuses a re-offer whose port-0 section names a payload type without its
    # rtpmap ("Failed to set remote audio description send parameters"); browsers keep it.
    opus = sdp_media.offered_codecs(AUDIO)[0]
    stopped = sdp_media.OutgoingTrack(
        "audio", "1", (opus,), (), "PA_pub|TR_a", "TR_a", ssrc=1111, stopped=True
    )
    offer = sdp.parse(
        sdp_media.subscriber_offer((stopped,), PARAMS, session_id=1, version=5, address="x")
    )
    section = offer.media[1]
    assert section.rejected and section.formats == ["111"]
    assert section.values("rtpmap") == ["111 opus/48000/2"]


AUDIO_MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"


def test_incoming_stream_with_red_first() -> None:
    sending = sdp.MediaSection(
        kind=AUDIO.kind,
        port=9,
        protocol=AUDIO.protocol,
        formats=["63", "111"],
        attributes=[
            ("mid", "1"),
            ("sendonly", ""),
            ("msid", "- cid1"),
            ("ssrc", "42 cname:x"),
            ("rtpmap", "63 red/48000/2"),
            ("fmtp", "63 111/111"),
            ("rtpmap", "111 opus/48000/2"),
        ],
    )
    offer = sdp.SessionDescription(media=[sending])
    answered = sdp_media.answer_media_section(sending, PARAMS, ["audio/opus", "audio/red"], "1")
    assert answered is not None
    answer = sdp.SessionDescription(media=[answered])
    (stream,) = sdp_media.incoming_streams(offer, answer)
    assert (stream.codec.name, stream.red and stream.red.name) == ("opus", "red")
    assert (stream.track_id, stream.ssrcs) == ("cid1", (42,))
