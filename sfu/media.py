"""Published tracks and the packet path from one publisher to its subscribers.

A :class:`TrackReceiver` takes each decrypted RTP packet of a published track and hands it to
every :class:`DownTrack`; each downtrack translates sequence numbers and timestamps
(``sfu/munger.py``), writes the subscriber's header into its own preallocated buffer
(``protocol/rtp.py``) and sends it. No awaits, queues or per-packet objects on this path.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from livekit.protocol import models

from protocol import rtcp, rtp
from protocol.sdp_media import Codec, OutgoingTrack
from sfu.munger import RtpMunger

logger = logging.getLogger(__name__)

#: The header-extension id we offer subscribers for ``sdes:mid`` (libwebrtc demuxes by mid).
MID_EXTENSION_ID = 1
MID_EXTENSION_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
_MAX_PACKET = 1500
#: Minimum time between two keyframe requests for one track (LiveKit's pli_throttle, 500 ms
#: for low quality).
KEYFRAME_REQUEST_INTERVAL_S = 0.5


class DownTrack:
    """One published track as one subscriber receives it.

    :param send: protects and sends a finished RTP packet on the subscriber's transport.
    """

    __slots__ = (
        "_buffer",
        "_extension",
        "_munger",
        "_needs_keyframe",
        "_request_keyframe",
        "_send",
        "enabled",
        "outgoing",
    )

    def __init__(
        self,
        outgoing: OutgoingTrack,
        send: Callable[[bytes], bool],
        request_keyframe: Callable[[], None],
    ) -> None:
        self.outgoing = outgoing
        self.enabled = True
        self._send = send
        self._request_keyframe = request_keyframe
        # Video cannot be decoded from the middle of a GOP: once packets really flow to this
        # subscriber, ask the publisher for a keyframe (LiveKit sends a PLI on downtrack bind).
        self._needs_keyframe = outgoing.kind == "video"
        self._munger = RtpMunger(
            outgoing.codecs[0].clock_rate,
            first_sequence=secrets.randbelow(1 << 15),
            first_timestamp=secrets.randbelow(1 << 31),
        )
        # Only the mid travels with each packet: it must name the subscriber's m= section.
        self._extension = rtp.build_extension_block([(MID_EXTENSION_ID, outgoing.mid.encode())])
        self._buffer = bytearray(_MAX_PACKET + len(self._extension))

    def write(self, packet: bytes, payload_start: int, payload_end: int, now: float) -> None:
        if not self.enabled:
            return
        translated = self._munger.translate(
            rtp.sequence_number(packet), rtp.timestamp(packet), rtp.ssrc(packet), now
        )
        if translated is None:
            return
        size = rtp.write_header(
            self._buffer,
            packet,
            payload_type_out=self.outgoing.codecs[0].payload_type,
            sequence=translated[0],
            timestamp_out=translated[1],
            ssrc_out=self.outgoing.ssrc,
            extension_block=self._extension,
            payload_start=payload_start,
            payload_end=payload_end,
        )
        if self._send(bytes(self._buffer[:size])) and self._needs_keyframe:
            self._needs_keyframe = False
            self._request_keyframe()


class TrackReceiver:
    """Fans one published track's packets out to its downtracks, and asks its publisher for
    keyframes on their behalf.

    :param send_rtcp: sends an RTCP packet to the publisher.
    """

    __slots__ = ("_last_keyframe_request", "_send_rtcp", "codec", "downtracks", "media_ssrc")

    def __init__(self, codec: Codec, media_ssrc: int, send_rtcp: Callable[[bytes], None]) -> None:
        self.codec = codec
        self.media_ssrc = media_ssrc
        self.downtracks: dict[str, DownTrack] = {}
        """Subscriber participant sid -> its downtrack."""
        self._send_rtcp = send_rtcp
        self._last_keyframe_request = -KEYFRAME_REQUEST_INTERVAL_S

    def request_keyframe(self, now: float) -> None:
        """Send a PLI upstream, at most once per interval (LiveKit throttles PLIs per track:
        ``rtc.pli_throttle``)."""
        if now - self._last_keyframe_request < KEYFRAME_REQUEST_INTERVAL_S or not self.media_ssrc:
            return
        self._last_keyframe_request = now
        self._send_rtcp(rtcp.pli(1, self.media_ssrc))

    def on_packet(self, packet: bytes, now: float) -> None:
        # Only the primary payload type is forwarded; RTX and RED need their own handling.
        if rtp.payload_type(packet) != self.codec.payload_type:
            return
        if not self.media_ssrc:
            self.media_ssrc = rtp.ssrc(packet)
        try:
            _, header, end = rtp.header_end(packet)
        except ValueError:
            return
        for downtrack in self.downtracks.values():
            downtrack.write(packet, header, end, now)


@dataclass
class PublishedTrack:
    """A track a participant publishes: what the room sees (``TrackInfo``) and its receiver."""

    info: models.TrackInfo
    receiver: TrackReceiver | None = None
    ssrcs: tuple[int, ...] = ()
    cid: str = ""
    subscribers: set[str] = field(default_factory=set)

    @property
    def sid(self) -> str:
        return self.info.sid
