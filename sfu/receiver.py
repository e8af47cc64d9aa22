"""A published track's receiving side: one :class:`TrackReceiver` per incoming stream (a
simulcast layer has its own) takes each decrypted RTP packet and hands it to every downtrack
on it in one ``fanout`` call (``sfu/fanout.py``: in C when built, which translates sequence
numbers and timestamps, writes the subscriber's header, protects and sends in one batch). No
awaits, queues or per-packet objects on this path.
RTCP: keyframe requests and NACKs go upstream, Receiver Reports and REMB go to the publisher
once a second, Sender Reports are translated for each subscriber.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from livekit.protocol import models

from protocol import rtcp, rtp
from protocol.keyframes import keyframe_test
from protocol.sdp_media import Codec
from sfu.buffer import PacketCache, ReceiveStats, RembEstimator
from sfu.fanout import fanout, skip
from sfu.quality import QualityScorer, Window

if TYPE_CHECKING:
    from sfu.downtrack import DownTrack
    from sfu.simulcast_track import SimulcastTrack
    from sfu.speakers import AudioLevel
    from sfu.svc import SvcTrack

logger = logging.getLogger(__name__)

#: Minimum time between two keyframe requests for one track (LiveKit's pli_throttle, 500 ms
#: for low quality).
KEYFRAME_REQUEST_INTERVAL_S = 0.5
#: Packet cache sizes (LiveKit's rtc.packet_buffer_size_video / _audio).
VIDEO_CACHE, AUDIO_CACHE = 500, 200
#: The SSRC our RTCP is sent from (the SFU has no media of its own towards a publisher).
RTCP_SENDER_SSRC = 1
#: REMB floor, start and ceiling (``sfu/buffer.py RembEstimator``).
REMB_MIN_BPS, REMB_START_BPS, REMB_MAX_BPS = 150_000, 1_000_000, 10_000_000


class RelayTap(Protocol):
    """Where a forwarded track's packets also go: a room on another node
    (``sfu/remote_forward.py``)."""

    def media(self, packet: bytes, spatial: int) -> None: ...

    def sender_report(self, spatial: int, ntp: int, rtp_timestamp: int) -> None: ...


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
        """Subscriber participant sid -> its downtrack (those on this stream)."""
        self.simulcast: SimulcastTrack | None = None
        """The track's layers, when this stream is one simulcast layer of it."""
        self.svc: SvcTrack | None = None
        """Who gets which layers, when this stream carries scalable VP9."""
        self.spatial = 0
        self.switching: dict[str, DownTrack] = {}
        """Subscribers waiting for this layer's next keyframe to move onto it."""
        self._keyframe_start = keyframe_test(codec.mime)
        self.quality = QualityScorer("video" if codec.mime.startswith("video") else "audio")
        self._quality_mark = (0, 0)
        """Packets received and lost at the last quality window."""
        self.audio_level: AudioLevel | None = None
        """Speech level from the ssrc-audio-level extension (audio tracks that send it)."""
        self._audio_level_id = 0
        self.cache = PacketCache(VIDEO_CACHE if codec.mime.startswith("video") else AUDIO_CACHE)
        self.stats = ReceiveStats()
        self.estimator = RembEstimator(
            minimum=REMB_MIN_BPS, maximum=REMB_MAX_BPS, start=REMB_START_BPS
        )
        self.send_rtcp = send_rtcp
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
        self.bitrate = 0
        """bps received, smoothed over a few ticks (what a subscriber of this stream costs)."""
        self.relay: RelayTap | None = None
        """Also sends every packet to another node while the track is forwarded there."""

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
            self.send_rtcp(rtcp.fir(RTCP_SENDER_SSRC, self.media_ssrc, self._fir_sequence))
        else:
            self.plis += 1
            self.send_rtcp(rtcp.pli(RTCP_SENDER_SSRC, self.media_ssrc))

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
            extension, header, end = rtp.header_end(packet)
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
        if self.relay is not None:
            self.relay.media(packet, self.spatial)
        timestamp = rtp.timestamp(packet)
        if self.audio_level is not None and extension >= 0:
            self._observe_level(packet, extension, header, timestamp)
        simulcast = self.simulcast
        if simulcast is not None:
            if now >= simulcast.next_check:
                simulcast.check(now)
            # Only a new packet may start a switch: a retransmitted old keyframe would be
            # followed by frames that do not depend on it.
            if (
                self.switching
                and self.stats.highest > highest
                and self._keyframe_start is not None
                and self._keyframe_start(packet, header, end)
            ):
                simulcast.on_keyframe(self, timestamp)
        if end == header:
            # Padding only, a bandwidth probe: LiveKit does not forward it, and the
            # subscribers' numbering closes over it so they see no loss to NACK.
            skip(sequence, ssrc, self.downtracks)
        elif self.svc is not None:
            self.svc.forward(self, packet, header, end, sequence, timestamp, ssrc, now)
        elif fanout(packet, header, end, sequence, timestamp, ssrc, now, self.downtracks):
            self.request_keyframe(now)

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
            self.send_rtcp(rtcp.nack(RTCP_SENDER_SSRC, self.media_ssrc, sequences))

    def on_sender_report(self, ntp: int, rtp_timestamp: int, now: float) -> None:
        """Remember the publisher's SR (for our RR's LSR) and translate it per subscriber."""
        self.stats.last_sr_ntp = ntp
        self.stats.last_sr_rtp = rtp_timestamp
        self.stats.last_sr_arrival = now
        if self.relay is not None:
            self.relay.sender_report(self.spatial, ntp, rtp_timestamp)
        for downtrack in self.downtracks.values():
            downtrack.sender_report(ntp, rtp_timestamp)

    def quality_window(self) -> Window:
        """Packets received and lost since the last window (``sfu/quality.py``)."""
        received, lost = self.stats.received, self.stats.cumulative_lost()
        window = Window(
            packets=received - self._quality_mark[0], lost=max(0, lost - self._quality_mark[1])
        )
        self._quality_mark = (received, lost)
        return window

    def watch_audio_level(self, audio_level: AudioLevel, extension_id: int) -> None:
        self.audio_level = audio_level
        self._audio_level_id = extension_id

    def _observe_level(self, packet: bytes, extension: int, header: int, timestamp: int) -> None:
        """RFC 6464: the level is the low 7 bits of the element's first byte."""
        assert self.audio_level is not None
        for ident, value in rtp.extensions(packet, extension, header):
            if ident == self._audio_level_id and value:
                self.audio_level.observe(value[0] & 0x7F, timestamp)
                return

    def tick(self, now: float, remb: bool = True) -> tuple[int, int]:
        """Once a second: Receiver Report, REMB (unless ``remb`` is False: a simulcast track
        sends one for all its layers) and NACK retries to the publisher. Returns the fraction
        lost (1/256) and the bitrate received since the last tick."""
        report, fraction, bitrate = self.report(now, remb)
        if report:
            self.send_rtcp(report)
        self.retry_nacks()
        return fraction, bitrate

    def report(self, now: float, remb: bool = True) -> tuple[bytes, int, int]:
        """The second's Receiver Report (and REMB), not sent: (RTCP, fraction lost in 1/256,
        bps received since the last report); empty before the stream is known."""
        elapsed = now - self._last_tick if self._last_tick else 1.0
        self._last_tick = now
        if not self.media_ssrc:
            return b"", 0, 0
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
        # Smoothed for the allocator: a keyframe makes one second's rate jump several-fold.
        self.bitrate = bitrate if not self.bitrate else int(0.7 * self.bitrate + 0.3 * bitrate)
        if remb:
            estimate = self.estimator.update(fraction, bitrate)
            report += rtcp.remb(RTCP_SENDER_SSRC, estimate, [self.media_ssrc])
        return report, fraction, bitrate

    def retry_nacks(self) -> None:
        self._nack(self.stats.nacks_due())


@dataclass
class PublishedTrack:
    """A track a participant publishes: what the room sees (``TrackInfo``) and its receiver."""

    info: models.TrackInfo
    receiver: TrackReceiver | None = None
    ssrcs: tuple[int, ...] = ()
    cid: str = ""
    simulcast: SimulcastTrack | None = None
    """The layers of a rid-based simulcast track, a receiver each (``receiver`` is one)."""
    svc: SvcTrack | None = None
    """The subscribers' layers of a scalable VP9 track (one stream, one receiver)."""
    rtx_payload_type: int | None = None

    @property
    def sid(self) -> str:
        return self.info.sid

    def receivers(self) -> list[TrackReceiver]:
        """Every stream's receiver: one, or one per simulcast layer seen so far."""
        if self.simulcast is not None and self.simulcast.receivers:
            return list(self.simulcast.all_receivers())
        return [self.receiver] if self.receiver is not None else []

    def remove_subscriber(self, subscriber_sid: str) -> None:
        if self.simulcast is not None:
            self.simulcast.unsubscribe(subscriber_sid)
        elif self.receiver is not None:
            self.receiver.downtracks.pop(subscriber_sid, None)
        if self.svc is not None:
            self.svc.unsubscribe(subscriber_sid)

    @property
    def layered(self) -> SimulcastTrack | SvcTrack | None:
        """Where subscribers choose their layer, if the track has layers."""
        return self.simulcast or self.svc
