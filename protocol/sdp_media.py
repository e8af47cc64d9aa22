"""Codec and header-extension negotiation for audio and video m= sections.

Answers take the offerer's payload types and extension ids (RFC 8829 section 5.3.1); offers use
LiveKit's payload types. RTX (RFC 4588) follows its primary codec through ``apt``; RED
(RFC 2198) is kept when its constituent codec is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from protocol.sdp import (
    MediaSection,
    SessionDescription,
    TransportParams,
    add_candidates,
    application_section,
    rejected_section,
    serialize,
    session_head,
    transport_attributes,
)


@dataclass(frozen=True)
class Codec:
    """One negotiated payload type."""

    payload_type: int
    mime: str
    """``audio/opus``, ``video/VP8``, ``video/rtx``... (case as in SDP)."""
    clock_rate: int
    channels: int = 0
    fmtp: str = ""
    rtcp_fb: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.mime.split("/", 1)[1]

    @property
    def apt(self) -> int | None:
        """The primary payload type an RTX codec repairs."""
        for part in self.fmtp.split(";"):
            key, _, value = part.strip().partition("=")
            if key == "apt" and value.isdigit():
                return int(value)
        return None


#: Header extensions we negotiate, per kind (LiveKit's set, ``pkg/rtc/mediaengine.go``).
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
#: Transport-wide congestion control, on video both ways: publishers get our feedback
#: (``sfu/twcc.py``) for libwebrtc's own estimator; subscribers' feedback drives our estimate of
#: their link (``sfu/congestion.py``).
TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
TWCC_FEEDBACK = "transport-cc"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
AUDIO_EXTENSIONS = (
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    AUDIO_LEVEL_URI,
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
)
VIDEO_EXTENSIONS = (
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    RID_URI,
    REPAIRED_RID_URI,
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension",
    TWCC_URI,
)
#: RTCP feedback offered that we add only where the section carries transport-wide numbers
#: (on audio, where we do not, libwebrtc would wait for feedback that never comes).
UNSUPPORTED_FEEDBACK = frozenset({TWCC_FEEDBACK})


def offered_codecs(section: MediaSection) -> list[Codec]:
    """The codecs of an m= section, in its preference order."""
    rtpmaps = dict(_split_pt(v) for v in section.values("rtpmap"))
    fmtps = dict(_split_pt(v) for v in section.values("fmtp"))
    feedback: dict[str, list[str]] = {}
    for value in section.values("rtcp-fb"):
        pt, fb = _split_pt(value)
        feedback.setdefault(pt, []).append(fb)
    codecs = []
    for pt in section.formats:
        if pt not in rtpmaps or not pt.isdigit():
            continue
        name, _, rest = rtpmaps[pt].partition("/")
        rate, _, channels = rest.partition("/")
        codecs.append(
            Codec(
                payload_type=int(pt),
                mime=f"{section.kind}/{name}",
                clock_rate=int(rate) if rate.isdigit() else 0,
                channels=int(channels) if channels.isdigit() else 0,
                fmtp=fmtps.get(pt, ""),
                rtcp_fb=tuple(feedback.get(pt, ())),
            )
        )
    return codecs


def _split_pt(value: str) -> tuple[str, str]:
    pt, _, rest = value.partition(" ")
    return pt, rest


def select_codecs(offered: Sequence[Codec], enabled: Iterable[str]) -> list[Codec]:
    """The offered codecs whose mime type is enabled (``room.enabled_codecs``), keeping RTX only
    for kept primaries and RED only when its constituent codec is kept."""
    allowed = {mime.lower() for mime in enabled}
    primaries = [
        c for c in offered if c.mime.lower() in allowed and c.name.lower() not in ("rtx", "red")
    ]
    kept = {c.payload_type for c in primaries}
    extras = []
    for codec in offered:
        name = codec.name.lower()
        if name == "rtx" and "video/rtx" in allowed and codec.apt in kept:
            extras.append(codec)
        elif name == "red" and codec.mime.lower() in allowed and _red_inner(codec) <= kept:
            extras.append(codec)
    order = {c.payload_type: i for i, c in enumerate(offered)}
    return sorted([*primaries, *extras], key=lambda c: order[c.payload_type])


def _red_inner(codec: Codec) -> set[int]:
    return {int(pt) for pt in codec.fmtp.split("/") if pt.isdigit()} or {-1}


def select_extensions(section: MediaSection) -> list[tuple[int, str]]:
    """The offered header extensions we support, with the offerer's ids."""
    supported = AUDIO_EXTENSIONS if section.kind == "audio" else VIDEO_EXTENSIONS
    chosen = []
    for value in section.values("extmap"):
        ident, _, uri = value.partition(" ")
        uri = uri.split(" ")[0]
        if uri in supported and ident.split("/")[0].isdigit():
            chosen.append((int(ident.split("/")[0]), uri))
    return chosen


def codec_attributes(
    codecs: Sequence[Codec], *, transport_cc: bool = False
) -> list[tuple[str, str]]:
    """rtpmap, rtcp-fb and fmtp lines; ``transport_cc``: the primary codec takes transport-cc
    feedback (the section carries transport-wide numbers)."""
    attributes: list[tuple[str, str]] = []
    for index, codec in enumerate(codecs):
        rate = f"{codec.clock_rate}/{codec.channels}" if codec.channels else str(codec.clock_rate)
        attributes.append(("rtpmap", f"{codec.payload_type} {codec.name}/{rate}"))
        feedback = [fb for fb in codec.rtcp_fb if fb not in UNSUPPORTED_FEEDBACK]
        if transport_cc and index == 0:
            feedback.append(TWCC_FEEDBACK)
        attributes += [("rtcp-fb", f"{codec.payload_type} {fb}") for fb in feedback]
        if codec.fmtp:
            attributes.append(("fmtp", f"{codec.payload_type} {codec.fmtp}"))
    return attributes


def prefer_codecs(codecs: Sequence[Codec], mimes: Sequence[str]) -> list[Codec]:
    """``codecs`` with those of ``mimes`` first, in that order, each followed by its RTX; the
    rest keep their order. The publisher sends the first codec of our answer, so this is how
    the codec it asked for in AddTrackRequest (and RED for audio) gets chosen (LiveKit
    ``participant_sdp.go`` reorders the publisher's codecs the same way)."""
    wanted = [mime.lower() for mime in mimes]
    by_payload_type = {c.payload_type: c for c in codecs}

    def rank(codec: Codec) -> int:
        primary = by_payload_type.get(codec.apt, codec) if codec.apt is not None else codec
        mime = primary.mime.lower()
        return wanted.index(mime) if mime in wanted else len(wanted)

    return sorted(codecs, key=rank)


def answer_media_section(
    offered: MediaSection,
    params: TransportParams,
    enabled: Iterable[str],
    mid: str,
    preferred: Sequence[str] = (),
) -> MediaSection | None:
    """Accept an offered audio/video section receive-only with the codecs we share, or None
    when there is none (the caller then rejects it). ``preferred`` mime types lead."""
    codecs = prefer_codecs(select_codecs(offered_codecs(offered), enabled), preferred)
    if not any(c.name.lower() not in ("rtx", "red") for c in codecs):
        return None
    section = MediaSection(
        kind=offered.kind,
        port=9,
        protocol=offered.protocol,
        formats=[str(c.payload_type) for c in codecs],
        other_lines=["c=IN IP4 0.0.0.0"],
    )
    section.attributes = transport_attributes(params, mid)
    section.attributes += [("extmap", f"{i} {uri}") for i, uri in select_extensions(offered)]
    # The client sends; an SFU receives. Offers of "recvonly" get "inactive" back.
    direction = "recvonly" if offered.has("sendonly") or offered.has("sendrecv") else "inactive"
    section.attributes += [(direction, ""), ("rtcp-mux", ""), ("rtcp-rsize", "")]
    transport_cc = offered.kind == "video" and any(
        uri == TWCC_URI for _, uri in select_extensions(offered)
    )
    section.attributes += codec_attributes(codecs, transport_cc=transport_cc)
    section.attributes += _simulcast_answer(offered)
    return section


def _simulcast_answer(offered: MediaSection) -> list[tuple[str, str]]:
    """Mirror a sender's simulcast (RFC 8853): without "recv" rids in the answer, libwebrtc
    falls back to a single encoding."""
    rids = [v.split(" ")[0] for v in offered.values("rid") if v.split(" ")[1:2] == ["send"]]
    simulcast = offered.value("simulcast")
    if not rids or not simulcast or not simulcast.startswith("send "):
        return []
    attributes = [("rid", f"{rid} recv") for rid in rids]
    attributes.append(("simulcast", "recv " + simulcast.removeprefix("send ")))
    return attributes


def answer(
    offer: SessionDescription,
    params: TransportParams,
    enabled: Sequence[str],
    *,
    session_id: int,
    address: str,
    preferred: Mapping[str, Sequence[str]] | None = None,
    outgoing: Mapping[str, OutgoingTrack] | None = None,
) -> str:
    """Answer a client's offer on one BUNDLE transport: data channels accepted, audio and video
    accepted with the codecs we share (receive-only), anything else rejected with port 0.
    ``preferred`` maps a section's msid track id to the mime types to answer first.
    ``outgoing`` maps the mid of a receive-only section to the track we send on it (single
    peer connection mode, where the client offers the sections it subscribes with)."""
    preferred = preferred or {}
    outgoing = outgoing or {}
    description = SessionDescription(session_lines=session_head(session_id, 2, address))
    accepted: list[str] = []
    for index, offered in enumerate(offer.media):
        mid = offered.mid if offered.mid is not None else str(index)
        section: MediaSection | None = None
        if offered.rejected:
            section = None
        elif offered.kind == "application":
            section = application_section(params, mid)
        elif offered.kind in ("audio", "video") and mid in outgoing:
            section = offer_media_section(outgoing[mid], params)
        elif offered.kind in ("audio", "video"):
            wanted = preferred.get(msid_track_id(offered), ())
            section = answer_media_section(offered, params, enabled, mid, wanted)
        if section is None:
            description.media.append(rejected_section(offered, mid, params))
        else:
            description.media.append(section)
            accepted.append(mid)
    if accepted:
        description.attributes.append(("group", "BUNDLE " + " ".join(accepted)))
    description.attributes += [("ice-lite", ""), ("msid-semantic", " WMS *")]
    add_candidates(description, params)
    return serialize(description)


#: The mid of the data channel section in every subscriber offer.
DATA_MID = "0"


@dataclass(frozen=True)
class OutgoingTrack:
    """One track the server sends on a subscriber transport (one m= section)."""

    kind: str
    mid: str
    codecs: tuple[Codec, ...]
    """Primary codec first, then its RTX and RED companions."""
    extensions: tuple[tuple[int, str], ...]
    stream_id: str
    """LiveKit's msid stream id, ``<participant_sid>|<track_sid>`` (``rtc/utils.go``)."""
    track_id: str
    ssrc: int
    rtx_ssrc: int = 0
    cname: str = "livekit-py-server"
    stopped: bool = False
    """Unsubscribed: the section stays (m= sections never go away) with port 0."""


def offer_media_section(track: OutgoingTrack, params: TransportParams) -> MediaSection:
    """A send-only m= section announcing ``track`` with its SSRCs (RFC 5576) and msid."""
    if track.stopped:
        section = MediaSection(
            track.kind, 0, "UDP/TLS/RTP/SAVPF", [str(track.codecs[0].payload_type)]
        )
        # With its rtpmap: aiortc refuses a section whose payload type has none.
        section.attributes = codec_attributes(track.codecs[:1])
        return rejected_section(section, track.mid, params)
    section = MediaSection(
        kind=track.kind,
        port=9,
        protocol="UDP/TLS/RTP/SAVPF",
        formats=[str(c.payload_type) for c in track.codecs],
        other_lines=["c=IN IP4 0.0.0.0"],
    )
    section.attributes = transport_attributes(params, track.mid)
    section.attributes += [("extmap", f"{i} {uri}") for i, uri in track.extensions]
    section.attributes += [("sendonly", ""), ("msid", f"{track.stream_id} {track.track_id}")]
    section.attributes += [("rtcp-mux", ""), ("rtcp-rsize", "")]
    transport_cc = any(uri == TWCC_URI for _, uri in track.extensions)
    section.attributes += codec_attributes(track.codecs, transport_cc=transport_cc)
    ssrcs = [track.ssrc, track.rtx_ssrc] if track.rtx_ssrc else [track.ssrc]
    if track.rtx_ssrc:
        section.attributes.append(("ssrc-group", f"FID {track.ssrc} {track.rtx_ssrc}"))
    for ssrc in ssrcs:
        section.attributes.append(("ssrc", f"{ssrc} cname:{track.cname}"))
        section.attributes.append(("ssrc", f"{ssrc} msid:{track.stream_id} {track.track_id}"))
    return section


def subscriber_offer(
    tracks: Sequence[OutgoingTrack],
    params: TransportParams,
    *,
    session_id: int,
    version: int,
    address: str,
) -> str:
    """The server's offer on a subscriber transport, all on one BUNDLE transport: the data
    channels first (mid "0", as in the first offer, since m= sections never move, RFC 8829
    5.2.2), then one section per track in the order they were added."""
    description = SessionDescription(session_lines=session_head(session_id, version, address))
    description.media = [application_section(params, DATA_MID)]
    description.media += [offer_media_section(track, params) for track in tracks]
    mids = " ".join(section.mid or "" for section in description.media if not section.rejected)
    description.attributes = [("group", f"BUNDLE {mids}"), ("ice-lite", "")]
    description.attributes.append(("msid-semantic", " WMS *"))
    add_candidates(description, params)
    return serialize(description)


@dataclass(frozen=True)
class IncomingStream:
    """A stream a publisher sends, as its offer and our answer agreed."""

    mid: str
    kind: str
    track_id: str
    """The msid track id: LiveKit's ``cid`` from the AddTrackRequest."""
    ssrcs: tuple[int, ...]
    """Primary SSRCs announced with ``a=ssrc`` (empty when only rids are used)."""
    codec: Codec
    """The media codec the publisher sends (the first of our answer that is not RED/RTX)."""
    extensions: tuple[tuple[int, str], ...]
    rtx: tuple[int, int] | None = None
    """(payload type, SSRC) of its retransmissions (RFC 4588), when negotiated."""
    red: Codec | None = None
    """RED (RFC 2198) when it leads our answer: the publisher then sends redundant audio."""
    rids: tuple[str, ...] = ()
    """Simulcast layers sent by rid (RFC 8851/8853), in the order of ``a=simulcast``."""
    rtx_payload_type: int | None = None
    """The RTX payload type repairing ``codec`` (RFC 4588), when negotiated."""


def incoming_streams(offer: SessionDescription, answer: SessionDescription) -> list[IncomingStream]:
    """The sending sections of a publisher's offer that our answer accepted."""
    found = []
    for offered, answered in zip(offer.media, answer.media, strict=False):
        if answered.rejected or not answered.has("recvonly"):
            continue
        track_id = msid_track_id(offered)
        codecs = offered_codecs(answered)
        primary = next((c for c in codecs if c.name.lower() not in ("red", "rtx")), None)
        if primary is None:
            continue
        found.append(
            IncomingStream(
                mid=offered.mid or "",
                kind=offered.kind,
                track_id=track_id,
                ssrcs=primary_ssrcs(offered),
                codec=primary,
                extensions=tuple(select_extensions(offered)),
                rtx=_rtx(offered, codecs, primary),
                red=codecs[0] if codecs[0].name.lower() == "red" else None,
                rids=sending_rids(offered),
                rtx_payload_type=next(
                    (c.payload_type for c in codecs if c.apt == primary.payload_type), None
                ),
            )
        )
    return found


def msid_track_id(section: MediaSection) -> str:
    """The track id of ``a=msid`` (LiveKit's ``cid``; the whole value when it has one part)."""
    msid = section.value("msid") or ""
    return msid.split(" ")[1] if " " in msid else msid


def sending_rids(section: MediaSection) -> tuple[str, ...]:
    """The rids a sender's ``a=simulcast:send`` lists (alternatives separated by "," count
    each; a "~" marks a paused one, still a layer), else its ``a=rid ... send`` lines."""
    simulcast = section.value("simulcast") or ""
    if simulcast.startswith("send "):
        listed = simulcast.removeprefix("send ").split(" ")[0]
        rids = [r.lstrip("~") for group in listed.split(";") for r in group.split(",")]
        return tuple(r for r in rids if r)
    return tuple(v.split(" ")[0] for v in section.values("rid") if v.split(" ")[1:2] == ["send"])


def _rtx(offered: MediaSection, codecs: Sequence[Codec], primary: Codec) -> tuple[int, int] | None:
    rtx_pt = next((c.payload_type for c in codecs if c.apt == primary.payload_type), None)
    for group in offered.values("ssrc-group"):
        semantics, *ssrcs = group.split()
        if semantics == "FID" and len(ssrcs) == 2 and rtx_pt is not None:
            return rtx_pt, int(ssrcs[1])
    return None


def primary_ssrcs(section: MediaSection) -> tuple[int, ...]:
    """The media SSRCs of a section in order of appearance, without FID repair streams
    (RFC 4588)."""
    repair = set()
    for group in section.values("ssrc-group"):
        semantics, *ssrcs = group.split()
        if semantics == "FID" and len(ssrcs) == 2:
            repair.add(int(ssrcs[1]))
    ordered: list[int] = []
    for value in section.values("ssrc"):
        head = value.split(" ")[0]
        if head.isdigit() and int(head) not in repair and int(head) not in ordered:
            ordered.append(int(head))
    return tuple(ordered)
