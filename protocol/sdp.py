"""SDP (RFC 8866) as the SFU needs it: a parser that keeps every attribute, and writers for the
descriptions the server sends (subscriber offers, publisher answers).

The parser is lossless at the attribute level: ``a=rid``, ``a=simulcast``, ``a=ssrc-group``,
``a=extmap`` and ``a=msid`` lines are kept in order, so later layers (simulcast, media) read
them without a second parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MediaSection:
    """One ``m=`` section: its line and its attributes, in order."""

    kind: str
    """``audio``, ``video`` or ``application``."""
    port: int
    protocol: str
    formats: list[str]
    attributes: list[tuple[str, str]] = field(default_factory=list)
    """(name, value) per ``a=`` line; value is "" for flags such as ``a=rtcp-mux``."""
    other_lines: list[str] = field(default_factory=list)
    """``c=``, ``b=`` and other lines of the section, kept verbatim."""

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.attributes if key == name]

    def value(self, name: str) -> str | None:
        found = self.values(name)
        return found[0] if found else None

    def has(self, name: str) -> bool:
        return any(key == name for key, _ in self.attributes)

    @property
    def mid(self) -> str | None:
        return self.value("mid")

    @property
    def rejected(self) -> bool:
        return self.port == 0


@dataclass
class SessionDescription:
    """A parsed SDP: session-level attributes and media sections."""

    session_lines: list[str] = field(default_factory=list)
    """``v=``, ``o=``, ``s=``, ``t=`` and other session lines, verbatim."""
    attributes: list[tuple[str, str]] = field(default_factory=list)
    media: list[MediaSection] = field(default_factory=list)

    def value(self, name: str) -> str | None:
        return next((v for k, v in self.attributes if k == name), None)

    def attribute(self, name: str, section: MediaSection) -> str | None:
        """A media-level attribute, falling back to the session level (ice-ufrag, fingerprint
        and setup may stand at either level, RFC 8839 / RFC 8122)."""
        value = section.value(name)
        return value if value is not None else self.value(name)


def parse(text: str) -> SessionDescription:
    """Parse SDP; raises ValueError naming the first line that is not SDP."""
    description = SessionDescription()
    section: MediaSection | None = None
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        line = line.rstrip("\r")
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise ValueError(f"SDP line {number} is not <type>=<value>: {line[:40]!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            section = _parse_media_line(value, number)
            description.media.append(section)
        elif kind == "a":
            name, _, attr_value = value.partition(":")
            target = section.attributes if section is not None else description.attributes
            target.append((name, attr_value))
        elif section is not None:
            section.other_lines.append(line)
        else:
            description.session_lines.append(line)
    if not description.session_lines or not description.session_lines[0].startswith("v=0"):
        raise ValueError("SDP does not start with v=0")
    return description


def _parse_media_line(value: str, number: int) -> MediaSection:
    parts = value.split()
    if len(parts) < 3:
        raise ValueError(f"SDP line {number}: m= line needs kind, port and protocol")
    try:
        port = int(parts[1].split("/")[0])
    except ValueError:
        raise ValueError(f"SDP line {number}: m= port is not a number") from None
    return MediaSection(kind=parts[0], port=port, protocol=parts[2], formats=parts[3:])


def serialize(description: SessionDescription) -> str:
    lines = list(description.session_lines)
    lines += [_attribute_line(name, value) for name, value in description.attributes]
    for section in description.media:
        formats = " ".join(section.formats)
        lines.append(f"m={section.kind} {section.port} {section.protocol} {formats}".rstrip())
        lines += section.other_lines
        lines += [_attribute_line(name, value) for name, value in section.attributes]
    return "\r\n".join(lines) + "\r\n"


def _attribute_line(name: str, value: str) -> str:
    return f"a={name}:{value}" if value else f"a={name}"


@dataclass(frozen=True)
class TransportParams:
    """What our side of one BUNDLE transport puts into every description."""

    ice_ufrag: str
    ice_pwd: str
    fingerprints: tuple[tuple[str, str], ...]
    """(algorithm, value) pairs of our DTLS certificate."""
    candidates: tuple[str, ...]
    """Candidate attribute values, without the ``a=`` (``candidate:1 1 udp ...``)."""
    setup: str
    """``actpass`` in our offers, ``passive`` in our answers: the server is the DTLS server."""


SCTP_PORT = 5000
MAX_MESSAGE_SIZE = 262144


def session_head(session_id: int, version: int, address: str) -> list[str]:
    return ["v=0", f"o=- {session_id} {version} IN IP4 {address}", "s=-", "t=0 0"]


def transport_attributes(params: TransportParams, mid: str) -> list[tuple[str, str]]:
    attributes = [("ice-ufrag", params.ice_ufrag), ("ice-pwd", params.ice_pwd)]
    attributes += [("fingerprint", f"{alg} {value}") for alg, value in params.fingerprints]
    attributes += [("setup", params.setup), ("mid", mid)]
    return attributes


def application_section(params: TransportParams, mid: str) -> MediaSection:
    section = MediaSection(
        kind="application",
        port=9,
        protocol="UDP/DTLS/SCTP",
        formats=["webrtc-datachannel"],
        other_lines=["c=IN IP4 0.0.0.0"],
    )
    section.attributes = transport_attributes(params, mid)
    section.attributes += [
        ("sctp-port", str(SCTP_PORT)),
        ("max-message-size", str(MAX_MESSAGE_SIZE)),
    ]
    return section


def add_candidates(description: SessionDescription, params: TransportParams) -> None:
    """Put our candidates into the BUNDLE-tagged (first accepted) section: it is the one whose
    transport every bundled section uses (RFC 8843 section 7.1.1)."""
    for section in description.media:
        if not section.rejected:
            section.attributes += [
                ("candidate", c.removeprefix("candidate:")) for c in params.candidates
            ]
            section.attributes.append(("end-of-candidates", ""))
            return


def bundle_tag(description: SessionDescription) -> tuple[str, int] | None:
    """(mid, m-line index) of the first accepted section, where trickled candidates belong."""
    for index, section in enumerate(description.media):
        if not section.rejected:
            return section.mid or str(index), index
    return None


def rejected_section(offered: MediaSection, mid: str, params: TransportParams) -> MediaSection:
    # RFC 8829 section 5.3.1: a rejected m= section keeps kind, protocol and one format, port 0.
    # The transport attributes are repeated because some stacks (aiortc) want them everywhere,
    # and the kept format's rtpmap and fmtp too, as browsers write them: aiortc refuses a
    # description whose payload type has no rtpmap ("Failed to set remote ... parameters").
    formats = offered.formats[:1]
    described = [
        (key, value)
        for key, value in offered.attributes
        if key in ("rtpmap", "fmtp") and value.split(" ", 1)[0] in formats
    ]
    return MediaSection(
        kind=offered.kind,
        port=0,
        protocol=offered.protocol,
        formats=formats,
        other_lines=["c=IN IP4 0.0.0.0"],
        attributes=[
            *transport_attributes(params, mid),
            ("rtcp-mux", ""),
            ("inactive", ""),
            *described,
        ],
    )


def remote_transport(description: SessionDescription) -> tuple[str, str, list[str], str] | None:
    """(ice-ufrag, ice-pwd, fingerprints "alg value", setup) of the first accepted section."""
    for section in description.media:
        if section.rejected:
            continue
        ufrag = description.attribute("ice-ufrag", section)
        pwd = description.attribute("ice-pwd", section)
        setup = description.attribute("setup", section) or "active"
        fingerprints = section.values("fingerprint") or [
            v for k, v in description.attributes if k == "fingerprint"
        ]
        if ufrag and pwd and fingerprints:
            return ufrag, pwd, fingerprints, setup
        raise ValueError("SDP lacks ice-ufrag, ice-pwd or fingerprint")
    return None
