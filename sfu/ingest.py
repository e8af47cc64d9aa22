"""A publisher's incoming RTP, to the receiver of its stream.

Streams the SDP announced are found by SSRC. Streams it did not (rid-based simulcast) are
found once by their mid and rid header extensions, then by SSRC; streams that are neither
media nor a layer are dropped unparsed from then on. Transport-wide numbers are noted for the
publisher's feedback (``sfu/twcc.py``). This runs for every packet a publisher sends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from livekit.protocol import models

from protocol import rtp, sdp_media
from sfu.counters import NODE_COUNTERS, MediaCounters
from sfu.fanout import extension_u16
from sfu.receiver import RTCP_SENDER_SSRC, PublishedTrack, TrackReceiver
from sfu.transport import RtcConnection
from sfu.twcc import FEEDBACK_INTERVAL_S, FeedbackWriter

logger = logging.getLogger(__name__)

#: SSRCs dropped unparsed per participant (streams that are neither media nor a layer).
MAX_UNFORWARDED_SSRCS = 64


class PublisherIngest:
    """Routes one participant's published packets (``publisher.on_rtp``) to its receivers.

    :param clock: the time packets are stamped with as they arrive (tests pass theirs).
    """

    def __init__(
        self,
        publisher: RtcConnection,
        counters: MediaCounters = NODE_COUNTERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publisher = publisher
        self._counters = counters
        self._clock = clock
        self.by_ssrc: dict[int, TrackReceiver] = {}
        self._unforwarded: dict[int, list[int]] = {}
        """SSRCs not forwarded (other simulcast layers and their RTX) -> [packets counted]:
        dropped at once instead of parsing their header extensions on every packet."""
        self._by_mid: dict[str, PublishedTrack] = {}
        self._mid_extension_id = 0
        self._rid_extension_id = 0
        self._repaired_rid_extension_id = 0
        self.twcc_id = 0
        """The publisher's transport-wide-cc extension id (0: not negotiated: REMB instead)."""
        self._arrivals = FeedbackWriter()
        self._next_feedback = 0.0

    def add(self, track: PublishedTrack) -> None:
        """A track whose section was just negotiated (its announced SSRCs and its mid)."""
        assert track.receiver is not None
        for ssrc in track.ssrcs:
            self.by_ssrc[ssrc] = track.receiver
        self._by_mid[track.info.mid] = track

    def remove(self, track: PublishedTrack) -> None:
        self._unforwarded.clear()
        if self._by_mid.get(track.info.mid) is track:
            del self._by_mid[track.info.mid]
        for ssrc in track.ssrcs:
            self.by_ssrc.pop(ssrc, None)

    def clear(self) -> None:
        self._unforwarded.clear()
        self.by_ssrc.clear()
        self._by_mid.clear()

    def learn_extensions(self, extensions: Iterable[tuple[int, str]]) -> None:
        for ident, uri in extensions:
            if uri == sdp_media.MID_URI:
                self._mid_extension_id = ident
            elif uri == sdp_media.RID_URI:
                self._rid_extension_id = ident
            elif uri == sdp_media.REPAIRED_RID_URI:
                self._repaired_rid_extension_id = ident
            elif uri == sdp_media.TWCC_URI:
                # The publisher's libwebrtc now estimates from our transport-cc feedback (and
                # takes no REMB): LiveKit's TWCC responder on the publisher side.
                self.twcc_id = ident

    def on_rtp(self, packet: bytes) -> None:
        now = self._clock()
        if self.twcc_id:
            number = extension_u16(packet, self.twcc_id)
            if number >= 0:
                self._note_arrival(number, now)
        ssrc = int.from_bytes(packet[8:12], "big")
        receiver = self.by_ssrc.get(ssrc)
        if receiver is None:
            dropped = self._unforwarded.get(ssrc)
            if dropped is not None:
                dropped[0] += 1
                return
            receiver = self._adopt_ssrc(packet)
        if receiver is not None:
            receiver.on_packet(packet, now)

    def _note_arrival(self, number: int, now: float) -> None:
        """A publisher's transport-wide number arrived: its feedback goes out every
        :data:`FEEDBACK_INTERVAL_S`, from the packet path (no timer: no packets, no feedback)."""
        self._arrivals.on_packet(number, now)
        if now >= self._next_feedback:
            self._next_feedback = now + FEEDBACK_INTERVAL_S
            media_ssrc = next(iter(self.by_ssrc), 0)
            for feedback in self._arrivals.feedback(RTCP_SENDER_SSRC, media_ssrc):
                self._publisher.send_rtcp(feedback)

    def _adopt_ssrc(self, packet: bytes) -> TrackReceiver | None:
        """An SSRC the SDP did not announce (rid-based simulcast): find its track by the mid
        header extension, then forward it or drop it from now on."""
        if not self._mid_extension_id:
            return None
        try:
            extension, header, _ = rtp.header_end(packet)
        except ValueError:
            return None
        if extension < 0:
            return None
        values = dict(rtp.extensions(packet, extension, header))
        mid = values.get(self._mid_extension_id)
        track = self._by_mid.get(mid.decode(errors="replace")) if mid else None
        if track is None or track.receiver is None:
            return None
        receiver, ssrc, payload_type = track.receiver, rtp.ssrc(packet), rtp.payload_type(packet)
        if track.simulcast is not None:
            return self._adopt_layer(track, receiver, ssrc, payload_type, values)
        media = payload_type in (receiver.codec.payload_type, receiver.red_payload_type)
        if receiver.media_ssrc or not media:
            self._drop_ssrc(ssrc, [0])
            return None
        receiver.media_ssrc = ssrc
        track.ssrcs += (ssrc,)
        self.by_ssrc[ssrc] = receiver
        return receiver

    def _adopt_layer(
        self,
        track: PublishedTrack,
        receiver: TrackReceiver,
        ssrc: int,
        payload_type: int,
        values: dict[int, bytes],
    ) -> TrackReceiver | None:
        """A new stream of a rid-simulcast track: a layer (by its rid) or a layer's RTX (by
        its repaired rid, RFC 8852). RTX padding often arrives first (bandwidth probes): it
        must never be taken for the media."""
        simulcast = track.simulcast
        assert simulcast is not None
        if payload_type == track.rtx_payload_type:
            rid = values.get(self._repaired_rid_extension_id, b"").decode(errors="replace")
            spatial = simulcast.spatial_by_rid.get(rid)
            if spatial is None:
                self._drop_ssrc(ssrc, [0])
                return None
            layer = simulcast.receivers.get(spatial)
            if layer is None:
                return None  # its layer has not started: looked at again next time
            layer.rtx = (payload_type, ssrc)
            return self._route(track, ssrc, layer)
        rid = values.get(self._rid_extension_id, b"").decode(errors="replace")
        spatial = simulcast.spatial_by_rid.get(rid)
        if spatial is None or payload_type not in (
            receiver.codec.payload_type,
            receiver.red_payload_type,
        ):
            self._drop_ssrc(ssrc, [0])  # not a layer announced, or not media: not parsed again
            return None
        layer = simulcast.receivers.get(spatial)
        if layer is not None:
            # The same rid on a new SSRC: the publisher restarted that layer's stream.
            layer.switch_source(ssrc, layer.rtx, self._clock())
            return self._route(track, ssrc, layer)
        if receiver.media_ssrc:
            layer = TrackReceiver(receiver.codec, ssrc, self._publisher.send_rtcp, red=receiver.red)
            layer.on_first_subscriber = receiver.on_first_subscriber
            layer.relay = receiver.relay
            self._counters.add_receiver(layer)
        else:
            layer, receiver.media_ssrc = receiver, ssrc
        simulcast.add_layer(spatial, layer)
        _set_layer_ssrc(track.info, rid, ssrc)
        logger.info("track %s: simulcast layer %r (spatial %d) started", track.sid, rid, spatial)
        return self._route(track, ssrc, layer)

    def _route(self, track: PublishedTrack, ssrc: int, receiver: TrackReceiver) -> TrackReceiver:
        track.ssrcs += (ssrc,)
        self.by_ssrc[ssrc] = receiver
        return receiver

    def _drop_ssrc(self, ssrc: int, counter: list[int]) -> None:
        if len(self._unforwarded) < MAX_UNFORWARDED_SSRCS:
            self._unforwarded[ssrc] = counter


def _set_layer_ssrc(info: models.TrackInfo, rid: str, ssrc: int) -> None:
    """Name the SSRC a layer arrives on in ``TrackInfo`` (its ``layers`` and its codec's), as
    LiveKit fills them once media flows."""
    for layers in (info.layers, *(codec.layers for codec in info.codecs)):
        for layer in layers:
            if layer.rid == rid:
                layer.ssrc = ssrc
