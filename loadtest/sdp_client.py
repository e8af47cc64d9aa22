"""The client's SDP: publisher offers, answers to the server's subscriber offers, and what the
client reads from the server's descriptions. Built on ``protocol/sdp.py``; sans-IO.

Offers are what a LiveKit client sends (JS SDK and libwebrtc conventions): one BUNDLE group,
rtcp-mux, ``a=msid:- <cid>`` with the AddTrackRequest's cid, Opus on payload type 111 and
VP8 on 96, simulcast as ``a=rid`` lines with ``a=simulcast:send`` (RFC 8853) and the mid and
rtp-stream-id header extensions on every packet.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

from protocol import sdp, sdp_media
from protocol.sdp import MediaSection, SessionDescription, TransportParams

OPUS_PT = 111
VP8_PT = 96
MID_EXTENSION_ID = 1
RID_EXTENSION_ID = 2
CNAME = "livekit-py-load-test"
#: Feedback we act on as a receiver (PLI, REMB) or as a sender (PLI, FIR).
ANSWER_FEEDBACK = ("goog-remb", "ccm fir", "nack pli")
_SKIPPED_CODECS = ("rtx", "red", "ulpfec", "flexfec-03")


@dataclass(frozen=True)
class OfferedStream:
    """One sending m= section of a publisher offer."""

    kind: str
    mid: str
    cid: str
    """The AddTrackRequest's cid, the msid track id."""
    ssrc: int = 0
    """The stream's SSRC, announced with ``a=ssrc`` (single layer); 0 with rids."""
    rids: tuple[str, ...] = ()
    """Simulcast layers, low to high (``q``, ``h``, ``f``)."""


def _media_section(stream: OfferedStream, params: TransportParams) -> MediaSection:
    audio = stream.kind == "audio"
    pt = OPUS_PT if audio else VP8_PT
    section = MediaSection(
        kind=stream.kind,
        port=9,
        protocol="UDP/TLS/RTP/SAVPF",
        formats=[str(pt)],
        other_lines=["c=IN IP4 0.0.0.0"],
    )
    section.attributes = sdp.transport_attributes(params, stream.mid)
    section.attributes.append(("extmap", f"{MID_EXTENSION_ID} {sdp_media.MID_URI}"))
    if stream.rids:
        section.attributes.append(("extmap", f"{RID_EXTENSION_ID} {sdp_media.RID_URI}"))
    section.attributes += [("sendonly", ""), ("msid", f"- {stream.cid}")]
    section.attributes += [("rtcp-mux", ""), ("rtcp-rsize", "")]
    if audio:
        section.attributes += [("rtpmap", f"{pt} opus/48000/2")]
        section.attributes += [("fmtp", f"{pt} minptime=10;useinbandfec=1")]
    else:
        section.attributes += [("rtpmap", f"{pt} VP8/90000")]
        section.attributes += [("rtcp-fb", f"{pt} {fb}") for fb in ANSWER_FEEDBACK]
    if stream.rids:
        section.attributes += [("rid", f"{rid} send") for rid in stream.rids]
        section.attributes.append(("simulcast", "send " + ";".join(stream.rids)))
    elif stream.ssrc:
        section.attributes.append(("ssrc", f"{stream.ssrc} cname:{CNAME}"))
        section.attributes.append(("ssrc", f"{stream.ssrc} msid:- {stream.cid}"))
    return section


def publisher_offer(
    streams: list[OfferedStream], params: TransportParams, *, session_id: int, version: int = 2
) -> str:
    """Our offer on the publisher transport: one send-only section per stream, BUNDLEd."""
    description = SessionDescription(session_lines=sdp.session_head(session_id, version, "0.0.0.0"))
    description.media = [_media_section(stream, params) for stream in streams]
    mids = " ".join(stream.mid for stream in streams)
    description.attributes = [("group", f"BUNDLE {mids}"), ("extmap-allow-mixed", "")]
    description.attributes.append(("msid-semantic", " WMS *"))
    sdp.add_candidates(description, params)
    return sdp.serialize(description)


@dataclass(frozen=True)
class RemoteTrack:
    """A track the server sends on a subscriber transport."""

    mid: str
    kind: str
    track_sid: str
    ssrcs: tuple[int, ...]
    """Media SSRCs (repair streams excluded)."""


@dataclass(frozen=True)
class RemoteDescription:
    """What the client needs from the server's offer or answer."""

    ice_ufrag: str
    ice_pwd: str
    fingerprints: tuple[tuple[str, str], ...]
    setup: str
    ice_lite: bool
    candidates: tuple[tuple[str, int, int], ...]
    """(IPv4 address, port, priority) of each UDP candidate in the description."""
    tracks: tuple[RemoteTrack, ...]
    sctp_port: int | None
    description: SessionDescription


def parse_remote(text: str) -> RemoteDescription:
    """Read the server's description; ValueError when it has no usable transport."""
    description = sdp.parse(text)
    transport = sdp.remote_transport(description)
    if transport is None:
        raise ValueError("the description has no accepted m= section")
    ufrag, pwd, fingerprints, setup = transport
    pairs = tuple(tuple(f.split(" ", 1)) for f in fingerprints if " " in f)
    candidates: list[tuple[str, int, int]] = []
    tracks = []
    sctp_port = None
    for index, section in enumerate(description.media):
        for value in section.values("candidate"):
            found = parse_candidate(value)
            if found is not None and found not in candidates:
                candidates.append(found)
        if section.rejected:
            continue
        if section.kind == "application":
            port = section.value("sctp-port")
            sctp_port = int(port) if port and port.isdigit() else sdp.SCTP_PORT
        elif section.kind in ("audio", "video") and _sends(section):
            track = _remote_track(section, section.mid or str(index))
            if track is not None:
                tracks.append(track)
    return RemoteDescription(
        ice_ufrag=ufrag,
        ice_pwd=pwd,
        fingerprints=tuple((a, v) for a, v in pairs),
        setup=setup,
        ice_lite=any(name == "ice-lite" for name, _ in description.attributes),
        candidates=tuple(candidates),
        tracks=tuple(tracks),
        sctp_port=sctp_port,
        description=description,
    )


def _sends(section: MediaSection) -> bool:
    return section.has("sendonly") or section.has("sendrecv")


def _remote_track(section: MediaSection, mid: str) -> RemoteTrack | None:
    msid = section.value("msid") or ""
    for value in section.values("ssrc"):  # older offers carry it on a=ssrc lines (RFC 5576)
        head, _, rest = value.partition(" ")
        if head.isdigit() and rest.startswith("msid:") and not msid:
            msid = rest.removeprefix("msid:")
    ssrcs = sdp_media.primary_ssrcs(section)
    parts = msid.split()
    if not parts:
        return None
    return RemoteTrack(mid=mid, kind=section.kind, track_sid=parts[-1], ssrcs=ssrcs)


def parse_candidate(text: str) -> tuple[str, int, int] | None:
    """(address, port, priority) of a UDP, component-1, IPv4 candidate; None otherwise (TCP,
    IPv6, mDNS names, garbage)."""
    fields = text.strip().removeprefix("a=").removeprefix("candidate:").split()
    if len(fields) < 8 or fields[1] != "1" or fields[2].lower() != "udp":
        return None
    try:
        address = ipaddress.IPv4Address(fields[4])
        port, priority = int(fields[5]), int(fields[3])
    except ValueError:
        return None
    if not 0 < port < 65536:
        return None
    return str(address), port, priority


def host_candidate(address: str, port: int, foundation: int = 1) -> str:
    """Our host candidate (RFC 8445 5.1.2.1: type preference 126, local preference 65535)."""
    priority = (126 << 24) | (65535 << 8) | 255
    return f"candidate:{foundation} 1 udp {priority} {address} {port} typ host generation 0"


def _answer_codec(section: MediaSection) -> sdp_media.Codec | None:
    codecs = [c for c in sdp_media.offered_codecs(section) if c.name.lower() not in _SKIPPED_CODECS]
    if section.kind == "audio":
        codecs.sort(key=lambda c: c.name.lower() != "opus")
    if not codecs:
        return None
    codec = codecs[0]
    return dataclasses.replace(
        codec, rtcp_fb=tuple(f for f in codec.rtcp_fb if f in ANSWER_FEEDBACK)
    )


def _answer_media(offered: MediaSection, params: TransportParams, mid: str) -> MediaSection | None:
    codec = _answer_codec(offered)
    if codec is None:
        return None
    section = MediaSection(
        kind=offered.kind,
        port=9,
        protocol=offered.protocol,
        formats=[str(codec.payload_type)],
        other_lines=["c=IN IP4 0.0.0.0"],
    )
    section.attributes = sdp.transport_attributes(params, mid)
    for value in offered.values("extmap"):
        ident, _, uri = value.partition(" ")
        if uri.split(" ")[0] == sdp_media.MID_URI:
            section.attributes.append(("extmap", f"{ident} {sdp_media.MID_URI}"))
    direction = "recvonly" if _sends(offered) else "inactive"
    section.attributes += [(direction, ""), ("rtcp-mux", ""), ("rtcp-rsize", "")]
    section.attributes += sdp_media.codec_attributes([codec])
    return section


def subscriber_answer(offer: RemoteDescription, params: TransportParams, *, session_id: int) -> str:
    """Answer the server's subscriber offer: data channels accepted, each track received with
    its first codec (no RTX, RED or FEC), anything else rejected; one BUNDLE group."""
    description = SessionDescription(session_lines=sdp.session_head(session_id, 2, "0.0.0.0"))
    accepted = []
    for index, offered in enumerate(offer.description.media):
        mid = offered.mid if offered.mid is not None else str(index)
        section: MediaSection | None = None
        if not offered.rejected and offered.kind == "application":
            section = sdp.application_section(params, mid)
        elif not offered.rejected and offered.kind in ("audio", "video"):
            section = _answer_media(offered, params, mid)
        if section is None:
            description.media.append(sdp.rejected_section(offered, mid, params))
        else:
            description.media.append(section)
            accepted.append(mid)
    if accepted:
        description.attributes.append(("group", "BUNDLE " + " ".join(accepted)))
    description.attributes.append(("msid-semantic", " WMS *"))
    sdp.add_candidates(description, params)
    return sdp.serialize(description)
