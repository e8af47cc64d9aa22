"""One published track as one subscriber receives it: the C fan-out core (``sfu/fanout.py``)
plus its RTCP (Sender Reports translated for the subscriber, its Receiver Reports read, its
NACKs answered from the receiver's cache).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from protocol import rtcp, rtp
from protocol.sdp_media import TWCC_URI, OutgoingTrack
from sfu.fanout import DownTrackCore, Sink
from sfu.quality import QualityScorer, Window

if TYPE_CHECKING:
    from sfu.receiver import PublishedTrack, TrackReceiver

#: The header-extension id we offer subscribers for ``sdes:mid`` (libwebrtc demuxes by mid).
MID_EXTENSION_ID = 1
MID_EXTENSION_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
#: The id we offer subscribers for transport-wide-cc (the client's own in single-PC mode).
TWCC_EXTENSION_ID = 3


class DownTrack(DownTrackCore):
    """One published track as one subscriber receives it: the fan-out core (``sfu/fanout.py``:
    munger, header rewrite, protect, send) plus its RTCP.

    :param sink: the subscriber transport's ``rtp_sink``; a plain callable (protects and sends
        a finished RTP packet, False when it was dropped) is wrapped in one.
    :param receiver: the track's receiver (for a simulcast track, the one told when the track
        first reaches a subscriber); ``receiver`` then follows the layer forwarded, for keyframe
        requests and retransmissions.
    """

    __slots__ = (
        "_origin",
        "_quality_packets",
        "_send_rtcp",
        "_sr_sent",
        "disabled",
        "fraction_lost",
        "has_rtx",
        "jitter",
        "outgoing",
        "paused",
        "published",
        "quality",
        "receiver",
        "rtt",
    )

    def __init__(
        self,
        outgoing: OutgoingTrack,
        sink: Sink | Callable[[memoryview], bool],
        send_rtcp: Callable[[bytes], None],
        receiver: TrackReceiver,
    ) -> None:
        # Publisher payload type -> the subscriber's, matched by codec name.
        by_name = {c.name.lower(): c.payload_type for c in outgoing.codecs}
        payload_types = {
            c.payload_type: by_name[c.name.lower()]
            for c in (receiver.codec, receiver.red)
            if c is not None and c.name.lower() in by_name
        }
        extension, twcc_at = _extension_block(outgoing)
        sink = sink if isinstance(sink, Sink) else Sink(sink)
        super().__init__(
            sink,
            outgoing.ssrc,
            outgoing.codecs[0].clock_rate,
            secrets.randbelow(1 << 15),
            secrets.randbelow(1 << 31),
            # The mid (naming the subscriber's m= section, with the id the subscriber's
            # description gave it) and, when negotiated, the transport-wide number.
            extension,
            payload_types,
            receiver.red_payload_type,
        )
        if twcc_at >= 0:
            sink.enable_twcc(secrets.randbelow(1 << 16))
            self.twcc_at = twcc_at
        primary = outgoing.codecs[0].payload_type
        rtx = [c for c in outgoing.codecs if c.name.lower() == "rtx" and c.apt == primary]
        self.has_rtx = bool(rtx and outgoing.rtx_ssrc)
        """Retransmissions and probe padding go on an RTX stream the subscriber accepted."""
        if self.has_rtx:
            self.set_rtx(outgoing.rtx_ssrc, rtx[0].payload_type, secrets.randbelow(1 << 15))
        self.outgoing = outgoing
        self.disabled = False
        """The subscriber turned it off (``UpdateTrackSettings.disabled``)."""
        self.paused = False
        """Its subscriber's bandwidth has no room for it (``sfu/allocator.py``)."""
        self.published: PublishedTrack | None = None
        """The track it carries (its source and priority for the allocator)."""
        self._send_rtcp = send_rtcp
        # red_accepted (from the core): whether the subscriber's answer kept RED; if not, only
        # primary blocks are sent.
        self.fraction_lost = 0.0
        """Loss the subscriber reported in its last Receiver Report (0..1)."""
        self.jitter = 0.0
        """Interarrival jitter it reported, in seconds."""
        self.rtt: float | None = None
        """Round-trip time from its LSR/DLSR against our Sender Reports, in seconds."""
        self._sr_sent: dict[int, float] = {}
        self.receiver = receiver
        """The stream it is fed from: the track's, or the simulcast layer it is on."""
        self._origin = receiver
        self.quality = QualityScorer(outgoing.kind)
        self._quality_packets = 0
        # Video cannot be decoded from the middle of a GOP: once packets really flow to this
        # subscriber, ask the publisher for a keyframe (LiveKit sends a PLI on downtrack bind).
        self.needs_keyframe = outgoing.kind == "video"
        # A simulcast switch moves to a layer with its own picture ids: they are munged to
        # continue, as LiveKit does, so the decoder sees one stream.
        self.vp8 = receiver.codec.mime.lower() == "video/vp8"

    def drop_rtx(self) -> None:
        """The subscriber refused RTX: retransmit on the media SSRC, never pad."""
        self.set_rtx(0, -1, 0)
        self.has_rtx = False

    def set_disabled(self, disabled: bool) -> None:
        self.disabled = disabled
        self._apply_enabled()

    def set_paused(self, paused: bool) -> None:
        """Paused or resumed for bandwidth; resumed video needs a keyframe to decode from."""
        if paused != self.paused:
            self.paused = paused
            self._apply_enabled()
            if not paused and self.outgoing.kind == "video":
                self.needs_keyframe = True

    def _apply_enabled(self) -> None:
        self.enabled = not (self.disabled or self.paused)

    def bind(self) -> None:
        """The subscriber's answer has this track: forwarding starts, and the publisher hears
        the first time any subscriber gets its track (LiveKit ``track_subscribed``)."""
        if not self.bound:
            self.bound = True
            self._origin.subscriber_bound()

    def retransmit(self, sequence: int, now: float) -> bool:
        """Answer a subscriber's NACK from the receiver's cache, under the sequence number the
        packet first went out with (RFC 4585 allows plain retransmission when RTX is not in
        use). A packet from another stream than the one forwarded now (a simulcast layer left
        behind) or no longer cached is not sent."""
        sent = self.sent(sequence)
        if sent is None:
            return False
        original = self.receiver.cache.get(sent[0])
        if original is None or rtp.ssrc(original) != sent[1]:
            return False
        _, header, end = rtp.header_end(original)
        timestamp = rtp.timestamp(original)
        if self.forward(original, header, end, sent[0], timestamp, sent[1], now, sent[2], sequence):
            self.receiver.request_keyframe(now)
        return True

    def sender_report(self, ntp: int, rtp_timestamp: int) -> None:
        """Send the publisher's SR mapped onto this subscriber's timestamps (lip sync needs
        the NTP/RTP pair of each stream, RFC 3550 6.4.1)."""
        if not self.packets:
            return
        translated = self.translate_timestamp(rtp_timestamp)
        report = rtcp.sender_report(self.outgoing.ssrc, ntp, translated, self.packets, self.octets)
        # The subscriber echoes the middle 32 bits of the NTP time as LSR (RFC 3550 6.4.1).
        self._sr_sent[(ntp >> 16) & 0xFFFFFFFF] = time.monotonic()
        if len(self._sr_sent) > 8:
            del self._sr_sent[next(iter(self._sr_sent))]
        self._send_rtcp(report)

    def quality_window(self) -> Window:
        """What this subscriber got since the last window: packets sent, and the loss, jitter
        and round trip its last Receiver Report gave."""
        packets = self.packets - self._quality_packets
        self._quality_packets = self.packets
        return Window(
            packets=packets,
            lost=round(packets * self.fraction_lost),
            rtt_ms=(self.rtt or 0.0) * 1000,
            jitter_ms=self.jitter * 1000,
        )

    def on_receiver_report(
        self, fraction_lost: int, jitter: int, last_sr: int, delay: int, now: float
    ) -> None:
        """Read the subscriber's report: loss, jitter and, via our SR, the round trip."""
        self.fraction_lost = fraction_lost / 256
        self.jitter = jitter / self.outgoing.codecs[0].clock_rate
        sent = self._sr_sent.get(last_sr)
        if last_sr and sent is not None:
            self.rtt = max(0.0, now - sent - delay / 65536)


def _extension_block(outgoing: OutgoingTrack) -> tuple[bytes, int]:
    """The header-extension block every packet of ``outgoing`` carries: its section's mid
    (none when the section did not negotiate ``sdes:mid``: libwebrtc then demultiplexes by
    the announced SSRC) and a slot for the transport-wide number when negotiated; and that
    slot's offset in the block (-1: none)."""
    elements: list[tuple[int, bytes]] = []
    twcc_id = 0
    for ident, uri in outgoing.extensions:
        if uri == MID_EXTENSION_URI:
            elements.append((ident, outgoing.mid.encode()))
        elif uri == TWCC_URI:
            twcc_id = ident
    if twcc_id:
        elements.append((twcc_id, b"\x00\x00"))
    if not elements:
        return b"", -1
    block = rtp.build_extension_block(elements)
    if not twcc_id:
        return block, -1
    # After the block header (4 bytes) and each element's own header (1 or 2 bytes).
    element_header = 1 if block[:2] == b"\xbe\xde" else 2
    offset = 4 + sum(element_header + len(value) for _, value in elements[:-1])
    return block, offset + element_header
