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

from protocol import rtp
from protocol.sdp_media import Codec, OutgoingTrack
from sfu.munger import RtpMunger

logger = logging.getLogger(__name__)

#: The header-extension id we offer subscribers for ``sdes:mid`` (libwebrtc demuxes by mid).
MID_EXTENSION_ID = 1
MID_EXTENSION_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
_MAX_PACKET = 1500


class DownTrack:
    """One published track as one subscriber receives it.

    :param send: protects and sends a finished RTP packet on the subscriber's transport.
    """

    __slots__ = ("_buffer", "_extension", "_munger", "_send", "enabled", "outgoing")

    def __init__(self, outgoing: OutgoingTrack, send: Callable[[bytes], None]) -> None:
        self.outgoing = outgoing
        self.enabled = True
        self._send = send
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
        self._send(bytes(self._buffer[:size]))


class TrackReceiver:
    """Fans one published track's packets out to its downtracks."""

    __slots__ = ("codec", "downtracks")

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.downtracks: dict[str, DownTrack] = {}
        """Subscriber participant sid -> its downtrack."""

    def on_packet(self, packet: bytes, now: float) -> None:
        # Only the primary payload type is forwarded; RTX and RED need their own handling.
        if rtp.payload_type(packet) != self.codec.payload_type:
            return
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
