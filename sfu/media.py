"""Published tracks and the packet path from one publisher to its subscribers.

A :class:`TrackReceiver` takes each decrypted RTP packet of a published track and hands it to
every :class:`DownTrack` in one ``fanout`` call (``sfu/fanout.py``: in C when built, which
translates sequence numbers and timestamps, writes the subscriber's header, protects and sends
in one batch). No awaits, queues or per-packet objects on this path.
RTCP: keyframe requests and NACKs go upstream, Receiver Reports and REMB go to the publisher
once a second, Sender Reports are translated for each subscriber.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from livekit.protocol import models

from protocol import rtcp, rtp
from protocol.sdp_media import Codec, OutgoingTrack
from sfu.buffer import PacketCache, ReceiveStats, RembEstimator
from sfu.fanout import DownTrackCore, Sink, fanout
from sfu.simulcast import Layers

logger = logging.getLogger(__name__)

#: The header-extension id we offer subscribers for ``sdes:mid`` (libwebrtc demuxes by mid).
MID_EXTENSION_ID = 1
MID_EXTENSION_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
#: Minimum time between two keyframe requests for one track (LiveKit's pli_throttle, 500 ms
#: for low quality).
KEYFRAME_REQUEST_INTERVAL_S = 0.5
#: Packet cache sizes (LiveKit's rtc.packet_buffer_size_video / _audio).
VIDEO_CACHE, AUDIO_CACHE = 500, 200
#: The SSRC our RTCP is sent from (the SFU has no media of its own towards a publisher).
RTCP_SENDER_SSRC = 1
#: REMB floor, start and ceiling (``sfu/buffer.py RembEstimator``).
REMB_MIN_BPS, REMB_START_BPS, REMB_MAX_BPS = 150_000, 1_000_000, 10_000_000


class DownTrack(DownTrackCore):
    """One published track as one subscriber receives it: the fan-out core (``sfu/fanout.py``:
    munger, header rewrite, protect, send) plus its RTCP.

    :param sink: the subscriber transport's ``rtp_sink``; a plain callable (protects and sends
        a finished RTP packet, False when it was dropped) is wrapped in one.
    :param receiver: the track's receiver, for keyframe requests and retransmissions.
    """

    __slots__ = (
        "_receiver",
        "_send_rtcp",
        "_sr_sent",
        "fraction_lost",
        "jitter",
        "outgoing",
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
        super().__init__(
            sink if isinstance(sink, Sink) else Sink(sink),
            outgoing.ssrc,
            outgoing.codecs[0].clock_rate,
            secrets.randbelow(1 << 15),
            secrets.randbelow(1 << 31),
            # Only the mid travels with each packet: it must name the subscriber's m= section,
            # with the id the subscriber's description gave it.
            _mid_extension(outgoing),
            payload_types,
            receiver.red_payload_type,
        )
        self.outgoing = outgoing
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
        self._receiver = receiver
        # Video cannot be decoded from the middle of a GOP: once packets really flow to this
        # subscriber, ask the publisher for a keyframe (LiveKit sends a PLI on downtrack bind).
        self.needs_keyframe = outgoing.kind == "video"

    def bind(self) -> None:
        """The subscriber's answer has this track: forwarding starts, and the publisher hears
        the first time any subscriber gets its track (LiveKit ``track_subscribed``)."""
        if not self.bound:
            self.bound = True
            self._receiver.subscriber_bound()

    def retransmit(self, sequence: int, now: float) -> bool:
        """Answer a subscriber's NACK from the receiver's cache (same sequence number again,
        RFC 4585 allows plain retransmission when RTX is not in use)."""
        original = self._receiver.cache.get(self.original_sequence(sequence))
        if original is None:
            return False
        _, header, end = rtp.header_end(original)
        sequence_in, timestamp, ssrc = (
            rtp.sequence_number(original),
            rtp.timestamp(original),
            rtp.ssrc(original),
        )
        if self.forward(original, header, end, sequence_in, timestamp, ssrc, now):
            self._receiver.request_keyframe(time.monotonic())
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

    def on_receiver_report(
        self, fraction_lost: int, jitter: int, last_sr: int, delay: int, now: float
    ) -> None:
        """Read the subscriber's report: loss, jitter and, via our SR, the round trip."""
        self.fraction_lost = fraction_lost / 256
        self.jitter = jitter / self.outgoing.codecs[0].clock_rate
        sent = self._sr_sent.get(last_sr)
        if last_sr and sent is not None:
            self.rtt = max(0.0, now - sent - delay / 65536)


def _mid_extension(outgoing: OutgoingTrack) -> bytes:
    """The header-extension block naming ``outgoing``'s section, or none when the section did
    not negotiate ``sdes:mid`` (libwebrtc then demultiplexes by the announced SSRC)."""
    for ident, uri in outgoing.extensions:
        if uri == MID_EXTENSION_URI:
            return rtp.build_extension_block([(ident, outgoing.mid.encode())])
    return b""


class TrackReceiver:
    """Fans one published track's packets out to its downtracks, and speaks RTCP with its
    publisher on their behalf.

    :param rtx: (payload type, SSRC) of the publisher's retransmissions (RFC 4588), if any.
    :param send_rtcp: sends an RTCP packet to the publisher.
    """

    def __init__(
        self,
        codec: Codec,
        media_ssrc: int,
        send_rtcp: Callable[[bytes], None],
        rtx: tuple[int, int] | None = None,
        red: Codec | None = None,
    ) -> None:
        self.codec = codec
        self.red = red
        self.red_payload_type = red.payload_type if red is not None else -1
        self.media_ssrc = media_ssrc
        self.rtx = rtx
        self.downtracks: dict[str, DownTrack] = {}
        """Subscriber participant sid -> its downtrack."""
        self.cache = PacketCache(VIDEO_CACHE if codec.mime.startswith("video") else AUDIO_CACHE)
        self.stats = ReceiveStats()
        self.estimator = RembEstimator(
            minimum=REMB_MIN_BPS, maximum=REMB_MAX_BPS, start=REMB_START_BPS
        )
        self._send_rtcp = send_rtcp
        self._last_keyframe_request = -KEYFRAME_REQUEST_INTERVAL_S
        self._fir_only = "ccm fir" in codec.rtcp_fb and "nack pli" not in codec.rtcp_fb
        self._fir_sequence = 0
        self._keyframe_pending = False
        self._last_tick = 0.0
        self.on_first_subscriber: Callable[[], None] | None = None
        """Called once, when a subscriber first has this track (not per packet)."""
        self._ever_subscribed = False
        # RTCP sent upstream, for metrics (LiveKit's incoming nack/pli/fir totals); counted
        # per feedback packet, never per media packet.
        self.nacks = 0
        self.plis = 0
        self.firs = 0

    def subscriber_bound(self) -> None:
        if not self._ever_subscribed:
            self._ever_subscribed = True
            if self.on_first_subscriber is not None:
                self.on_first_subscriber()

    def request_keyframe(self, now: float) -> None:
        """Send a PLI upstream, at most once per interval (LiveKit throttles PLIs per track:
        ``rtc.pli_throttle``). A request inside the interval is deferred, not dropped: a
        subscriber that starts just after another must still get its keyframe."""
        if now - self._last_keyframe_request < KEYFRAME_REQUEST_INTERVAL_S or not self.media_ssrc:
            self._keyframe_pending = True
            return
        self._keyframe_pending = False
        self._last_keyframe_request = now
        if self._fir_only:
            # RFC 5104 FIR for publishers that negotiated "ccm fir" but not "nack pli".
            self._fir_sequence = (self._fir_sequence + 1) & 0xFF
            self.firs += 1
            self._send_rtcp(rtcp.fir(RTCP_SENDER_SSRC, self.media_ssrc, self._fir_sequence))
        else:
            self.plis += 1
            self._send_rtcp(rtcp.pli(RTCP_SENDER_SSRC, self.media_ssrc))

    def switch_source(self, media_ssrc: int, rtx: tuple[int, int] | None, now: float) -> None:
        """Forward another stream of this track from now on (a simulcast layer, ``sfu/
        simulcast.py``). Its sequence numbers are its own, so loss accounting and the packet
        cache start afresh (the downtracks' mungers keep their output continuous), and a
        keyframe is asked for at once: subscribers cannot decode the new layer before one."""
        self.media_ssrc = media_ssrc
        self.rtx = rtx
        self.stats.restart()
        self.cache = PacketCache(len(self.cache))
        self._last_keyframe_request = -KEYFRAME_REQUEST_INTERVAL_S
        self.request_keyframe(now)

    def on_packet(self, packet: bytes, now: float) -> None:
        pt = rtp.payload_type(packet)
        if self.rtx is not None and pt == self.rtx[0]:
            packet = self._from_rtx(packet)
        elif pt != self.codec.payload_type and pt != self.red_payload_type:
            return  # comfort noise, DTMF and the like are not forwarded
        try:
            _, header, end = rtp.header_end(packet)
        except ValueError:
            return
        sequence, ssrc = rtp.sequence_number(packet), rtp.ssrc(packet)
        if not self.media_ssrc:
            self.media_ssrc = ssrc
        if self._keyframe_pending:
            self.request_keyframe(now)
        highest = self.stats.highest
        self.stats.on_packet(sequence, end - header)
        if self.stats.highest > highest + 1 and highest >= 0:
            self._nack(self.stats.nacks_due())
        self.cache.put(sequence, packet)
        if fanout(packet, header, end, sequence, rtp.timestamp(packet), ssrc, now, self.downtracks):
            self.request_keyframe(time.monotonic())

    def _from_rtx(self, packet: bytes) -> bytes:
        """Unwrap an RTX packet (RFC 4588 section 4): the original sequence number leads the
        payload; payload type and SSRC become the primary's again."""
        try:
            _, header, end = rtp.header_end(packet)
        except ValueError:
            return b""
        if end - header < 2:
            return b""
        original = bytearray(packet[:header]) + packet[header + 2 : end]
        original[1] = (original[1] & 0x80) | self.codec.payload_type
        original[2:4] = packet[header : header + 2]
        original[8:12] = self.media_ssrc.to_bytes(4, "big")
        original[0] &= 0xDF  # padding was removed with the tail
        return bytes(original)

    def _nack(self, sequences: list[int]) -> None:
        if sequences and self.media_ssrc:
            self.nacks += len(sequences)
            self._send_rtcp(rtcp.nack(RTCP_SENDER_SSRC, self.media_ssrc, sequences))

    def on_sender_report(self, ntp: int, rtp_timestamp: int, now: float) -> None:
        """Remember the publisher's SR (for our RR's LSR) and translate it per subscriber."""
        self.stats.last_sr_ntp = ntp
        self.stats.last_sr_arrival = now
        for downtrack in self.downtracks.values():
            downtrack.sender_report(ntp, rtp_timestamp)

    def tick(self, now: float) -> None:
        """Once a second: Receiver Report, REMB and NACK retries to the publisher."""
        elapsed = now - self._last_tick if self._last_tick else 1.0
        self._last_tick = now
        if not self.media_ssrc:
            return
        fraction, lost, highest = self.stats.report()
        last_sr = (self.stats.last_sr_ntp >> 16) & 0xFFFFFFFF
        delay = int((now - self.stats.last_sr_arrival) * 65536) if last_sr else 0
        report = rtcp.receiver_report(
            RTCP_SENDER_SSRC,
            self.media_ssrc,
            fraction_lost=fraction,
            cumulative_lost=lost,
            highest_sequence=highest,
            jitter=0,
            last_sr=last_sr,
            delay_since_last_sr=delay,
        )
        bitrate = int(self.stats.take_bytes() * 8 / max(elapsed, 0.001))
        estimate = self.estimator.update(fraction, bitrate)
        self._send_rtcp(report + rtcp.remb(RTCP_SENDER_SSRC, estimate, [self.media_ssrc]))
        self._nack(self.stats.nacks_due())


@dataclass
class PublishedTrack:
    """A track a participant publishes: what the room sees (``TrackInfo``) and its receiver."""

    info: models.TrackInfo
    receiver: TrackReceiver | None = None
    ssrcs: tuple[int, ...] = ()
    cid: str = ""
    layers: Layers | None = None
    """The layers of a rid-based simulcast track, and which one is forwarded."""
    rtx_payload_type: int | None = None

    @property
    def sid(self) -> str:
        return self.info.sid
