"""A participant's tracks: what it publishes, and the downtracks it subscribes to."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from livekit.protocol import models, rtc

from config.schema import AudioConfig
from protocol import rtcp, sdp, sdp_media
from sfu.congestion import CongestionSettings, SubscriberBandwidth, carries_estimate
from sfu.counters import NODE_COUNTERS, MediaCounters
from sfu.downtrack import MID_EXTENSION_ID, MID_EXTENSION_URI, TWCC_EXTENSION_ID, DownTrack
from sfu.dynacast import PAUSE_DELAY_S
from sfu.ingest import PublisherIngest
from sfu.limits import (
    MAX_TRACKS_PER_PARTICIPANT,
)
from sfu.quality import MAX_SCORE, mean_opinion, quality_of
from sfu.receiver import PublishedTrack, TrackReceiver
from sfu.simulcast_track import SimulcastTrack
from sfu.single_pc import Placement, SectionPlan, track_kind
from sfu.speakers import AudioLevel
from sfu.svc import SvcTrack
from sfu.track_info import PublishError, track_info
from sfu.transport import RtcConnection, SubscriberTransport

logger = logging.getLogger(__name__)

#: LiveKit refuses more than this many tracks announced but not yet negotiated.
MAX_PENDING_TRACKS = 20
#: Subscription settings kept per participant for tracks it has no downtrack of yet.
MAX_KEPT_SETTINGS = 256


class ParticipantTracks:
    """Published tracks (pending until their media section is negotiated) and subscriptions.

    :param subscriber: the participant's subscriber transport, where its downtracks go; None
        in single peer connection mode, where they go on ``publisher``, on the sections the
        client offers to receive on (``sfu/single_pc.py``).
    :param counters: where receivers and downtracks are registered for the metrics.
    :param clock: the time packets and RTCP are stamped with as they arrive (tests pass theirs).
    """

    def __init__(
        self,
        publisher: RtcConnection,
        subscriber: SubscriberTransport | None,
        counters: MediaCounters = NODE_COUNTERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counters = counters
        self._clock = clock
        self.pending: dict[str, PublishedTrack] = {}
        """cid -> track announced by AddTrackRequest, waiting for its m= section."""
        self.published: dict[str, PublishedTrack] = {}
        """track sid -> published track."""
        self.ingest = PublisherIngest(publisher, counters, clock)
        """Where the publisher's packets find their receivers."""
        self.downtracks: dict[str, DownTrack] = {}
        """track sid -> this participant's downtrack of another participant's track."""
        self._downtrack_by_ssrc: dict[int, DownTrack] = {}
        self._settings: dict[str, rtc.UpdateTrackSettings] = {}
        """track sid -> the subscriber's last settings for it (they may come before the
        downtrack exists: in single peer connection mode it waits for a section)."""
        self.adaptive_stream = False
        self.audio_config = AudioConfig()
        """Active speaker detection for the audio tracks published (the room's)."""
        self.dynacast_delay = PAUSE_DELAY_S
        self.congestion = CongestionSettings()
        """``rtc.congestion_control`` (the room's settings; set before subscribing)."""
        self.bandwidth: SubscriberBandwidth | None = None
        """This subscriber's estimate and allocation, once it has video to share it among."""
        self.on_stream_state: Callable[[DownTrack, bool], None] | None = None
        """Told a downtrack the allocator paused (True) or resumed (False)."""
        self.on_probing: Callable[[], None] | None = None
        """Told when a probe runs: padding is then due every few ms (``pad``)."""
        self.owner_sid = ""
        """The sid of the participant these tracks are (the subscriber, for the allocator)."""
        """The client joined with adaptive stream: simulcast starts at the lowest layer until
        it gives the size of its video element (LiveKit)."""
        self._subscriber = subscriber
        self._publisher = publisher
        self.on_refused: Callable[[str], None] | None = None
        """Told the sid of a subscribed track the client refused (its section rejected)."""
        self._refused: set[str] = set()
        self.plan = SectionPlan() if subscriber is None else None
        """Single peer connection mode: which offered section carries which subscription."""
        publisher.on_rtp = self.ingest.on_rtp
        if subscriber is None:
            self._subscriber_pc = publisher
            publisher.on_rtcp = self._on_rtcp
        else:
            self._subscriber_pc = subscriber.pc
            publisher.on_rtcp = self._on_publisher_rtcp
            subscriber.pc.on_rtcp = self._on_subscriber_rtcp
            subscriber.on_answer = self._on_subscriber_answer

    def add(self, request: rtc.AddTrackRequest, can_publish_source: bool) -> models.TrackInfo:
        """Announce a track (LiveKit ``participant.go AddTrack``); raises PublishError."""
        if len(self.pending) >= MAX_PENDING_TRACKS and request.cid not in self.pending:
            raise PublishError(rtc.RequestResponse.LIMIT_EXCEEDED, "too many pending tracks")
        tracks = len(self.published) + len(self.pending)
        if tracks >= MAX_TRACKS_PER_PARTICIPANT and request.cid not in self.pending:
            raise PublishError(rtc.RequestResponse.LIMIT_EXCEEDED, "too many tracks")
        info = track_info(request, can_publish_source)
        self.pending[request.cid] = PublishedTrack(info=info, cid=request.cid)
        return info

    def preferred_codecs(self) -> dict[str, list[str]]:
        """cid -> the mime types its section of the next answer should lead with: the codec
        the client asked for (``simulcast_codecs``), and RED before Opus unless it disabled
        RED (LiveKit answers that way; livekit-client sends whatever leads)."""
        preferred: dict[str, list[str]] = {}
        for cid, track in self.pending.items():
            mimes = [codec.mime_type for codec in track.info.codecs if codec.mime_type][:1]
            if track.info.type == models.TrackType.AUDIO and not track.info.disable_red:
                mimes = ["audio/red", *mimes]
            if mimes:
                preferred[cid] = mimes
        return preferred

    def negotiated(
        self, offer: sdp.SessionDescription, answer: str
    ) -> tuple[list[PublishedTrack], list[PublishedTrack]]:
        """(tracks whose media sections the publisher's offer and our answer just agreed,
        published tracks whose section no longer sends: the client removed the transceiver)."""
        streams = sdp_media.incoming_streams(offer, sdp.parse(answer))
        sending = {stream.mid for stream in streams}
        removed = [t for t in self.published.values() if t.info.mid not in sending]
        for gone in removed:
            self.unpublish(gone)
        ready = []
        for stream in streams:
            track = self.pending.pop(stream.track_id, None)
            if track is None:
                continue
            track.info.mid = stream.mid
            track.info.mime_type = stream.codec.mime
            del track.info.codecs[:]
            track.info.codecs.append(
                models.SimulcastCodecInfo(
                    mime_type=stream.codec.mime,
                    mid=stream.mid,
                    cid=track.cid,
                    layers=track.info.layers,
                )
            )
            primary = stream.ssrcs[0] if stream.ssrcs else 0
            track.receiver = TrackReceiver(
                stream.codec, primary, self._publisher.send_rtcp, rtx=stream.rtx, red=stream.red
            )
            track.rtx_payload_type = stream.rtx_payload_type
            for ident, uri in stream.extensions:
                if uri == sdp_media.AUDIO_LEVEL_URI and track_kind(track) == "audio":
                    track.receiver.watch_audio_level(
                        AudioLevel(self.audio_config, stream.codec.clock_rate), ident
                    )
            if stream.rids and not stream.ssrcs:
                # Layers announced by rid only: each gets a receiver as its packets arrive,
                # this one for the first (sfu/simulcast_track.py).
                track.simulcast = SimulcastTrack(stream.rids, track.info, self.dynacast_delay)
                track.receiver.simulcast = track.simulcast
            elif stream.codec.mime.lower() == "video/vp9":
                # One stream that may carry several spatial layers (sfu/svc.py).
                track.svc = SvcTrack(track.info, self.dynacast_delay)
                track.receiver.svc = track.svc
            # Simulcast announced by SSRC (a=ssrc-group:SIM, no rids) is not told apart: its
            # first SSRC is forwarded to everyone.
            track.ssrcs = stream.ssrcs[:1] + ((stream.rtx[1],) if stream.rtx else ())
            self.ingest.add(track)
            self._counters.add_receiver(track.receiver)
            self.ingest.learn_extensions(stream.extensions)
            self.published[track.sid] = track
            ready.append(track)
        return ready, removed

    def unpublish(self, track: PublishedTrack) -> None:
        self.published.pop(track.sid, None)
        self.ingest.remove(track)
        for receiver in track.receivers():
            self._counters.retire_receiver(receiver)

    def unpublish_all(self) -> list[PublishedTrack]:
        tracks = list(self.published.values())
        self.published.clear()
        self.ingest.clear()
        for track in tracks:
            for receiver in track.receivers():
                self._counters.retire_receiver(receiver)
        return tracks

    def close_audio_interval(self) -> float | None:
        """The end of a speaker interval: the loudest level among the audio tracks published
        (``sfu/speakers.py``), or None when none carries audio levels."""
        levels = [
            receiver.audio_level.close_interval()
            for track in self.published.values()
            if (receiver := track.receiver) is not None and receiver.audio_level is not None
        ]
        return max(levels) if levels else None

    def connection_score(self) -> float:
        """The end of a quality window: the worst score among the streams this participant
        publishes and receives (``sfu/quality.py``)."""
        stats = self._counters.quality
        scores = []
        for track in self.published.values():
            for receiver in track.receivers():
                window = receiver.quality_window()
                stats.record("incoming", track_kind(track), window)
                scores.append(receiver.quality.update(window))
        for downtrack in self.downtracks.values():
            window = downtrack.quality_window()
            stats.record("outgoing", downtrack.outgoing.kind, window)
            scores.append(downtrack.quality.update(window))
        score = min(scores, default=MAX_SCORE)
        stats.record_participant(mean_opinion(score), int(quality_of(score)))
        return score

    def close(self) -> None:
        """The participant left: its downtracks and receivers count no more packets, so their
        counts move to the node totals now."""
        for downtrack in self.downtracks.values():
            self._counters.retire_downtrack(downtrack)
        for track in self.published.values():
            for receiver in track.receivers():
                self._counters.retire_receiver(receiver)

    def _on_rtcp(self, packet: bytes) -> None:
        """One peer connection both ways: a compound packet may hold a publisher's Sender
        Reports and a subscriber's feedback; each handler ignores SSRCs not its own."""
        self._on_publisher_rtcp(packet)
        self._on_subscriber_rtcp(packet)

    def _on_subscriber_rtcp(self, packet: bytes) -> None:
        """A subscriber's keyframe request goes to the publisher of that track; its NACKs are
        answered from the track's packet cache."""
        now = self._clock()
        totals = self._counters.totals
        for media_ssrc in rtcp.keyframe_requests(packet):
            requester = self._downtrack_by_ssrc.get(media_ssrc)
            if requester is not None:
                totals.plis_out += 1
                requester.receiver.request_keyframe(now)
        for ssrc, fraction, _lost, jitter, last_sr, delay in rtcp.report_blocks(packet):
            reported = self._downtrack_by_ssrc.get(ssrc)
            if reported is not None:
                reported.on_receiver_report(fraction, jitter, last_sr, delay, now)
        if self.congestion.enabled and (self.bandwidth is not None or carries_estimate(packet)):
            self._bandwidth().on_rtcp(packet, now, self.downtracks)
            self._start_probe_if_due()
        for media_ssrc, sequence in rtcp.nacked_sequences(packet):
            downtrack = self._downtrack_by_ssrc.get(media_ssrc)
            if downtrack is not None:
                totals.nacks_out += 1
                packets, octets = downtrack.packets, downtrack.octets
                downtrack.retransmit(sequence, now)
                totals.retransmit_packets_out += downtrack.packets - packets
                totals.retransmit_bytes_out += downtrack.octets - octets

    def _bandwidth(self) -> SubscriberBandwidth:
        if self.bandwidth is None:
            self.bandwidth = SubscriberBandwidth(
                self._subscriber_pc.rtp_sink,
                self.congestion,
                self._stream_state,
                self.owner_sid,
                self._counters.totals,
            )
        return self.bandwidth

    def _start_probe_if_due(self) -> None:
        if self.bandwidth is not None and self.bandwidth.probing and self.on_probing:
            self.on_probing()

    def _stream_state(self, downtrack: DownTrack, paused: bool) -> None:
        if self.on_stream_state is not None:
            self.on_stream_state(downtrack, paused)

    def pad(self, now: float) -> bool:
        """Send the probe padding due; False once the probe is over."""
        bandwidth = self.bandwidth
        if bandwidth is None or not bandwidth.probing:
            return False
        bandwidth.pad(now, self.downtracks.values())
        return True

    def _on_subscriber_answer(self, answer: str) -> None:
        """Bind the downtracks the answer accepted (forwarding starts, and with it the keyframe
        request); a subscriber that refused RED (Firefox, Safari) gets primary blocks only."""
        media = sdp.parse(answer).media
        formats = {s.mid: set(s.formats) for s in media if not s.rejected}
        rejected = {s.mid for s in media if s.rejected}
        twcc = {s.mid for s in media if any(sdp_media.TWCC_URI in v for v in s.values("extmap"))}
        for sid, downtrack in self.downtracks.items():
            outgoing = downtrack.outgoing
            if outgoing.mid not in twcc:
                downtrack.twcc_at = -1  # offered, not accepted: no numbers, no feedback
            accepted = formats.get(outgoing.mid, set())
            if any(_is_rtx(c) and str(c.payload_type) not in accepted for c in outgoing.codecs):
                downtrack.drop_rtx()
            if outgoing.mid in formats:
                downtrack.bind()
            elif outgoing.mid in rejected and sid not in self._refused:
                # The client refused the section (a codec it cannot decode): LiveKit tells it
                # with SE_CODEC_UNSUPPORTED instead of leaving the subscription hanging.
                self._refused.add(sid)
                if self.on_refused is not None:
                    self.on_refused(sid)
            red = [c for c in outgoing.codecs if c.name.lower() == "red"]
            if red:
                accepted = formats.get(outgoing.mid, set())
                downtrack.red_accepted = str(red[0].payload_type) in accepted

    def _on_publisher_rtcp(self, packet: bytes) -> None:
        now = self._clock()
        for ssrc, ntp, rtp_timestamp in rtcp.sender_reports(packet):
            receiver = self.ingest.by_ssrc.get(ssrc)
            if receiver is not None:
                receiver.on_sender_report(ntp, rtp_timestamp, now)

    def tick(self, now: float) -> None:
        if self.bandwidth is not None:
            self.bandwidth.tick(now, self.downtracks)
            self._start_probe_if_due()
        remb = not self.ingest.twcc_id  # REMB only for publishers without transport-cc
        for track in self.published.values():
            if track.simulcast is not None:
                track.simulcast.tick(now, remb)
            elif track.receiver is not None:
                track.receiver.tick(now, remb)
            if track.svc is not None:
                track.svc.tick(now)

    # --- subscribing -----------------------------------------------------------------------

    def subscribe(self, publisher_sid: str, track: PublishedTrack, subscriber_sid: str) -> bool:
        """Add a downtrack of ``track``; True when the subscriber needs a new offer (in single
        peer connection mode the downtrack waits for a section of the client's next offer)."""
        if track.sid in self.downtracks or track.receiver is None:
            return False
        if self.plan is not None:
            if track.sid in self.plan.waiting:
                return False
            self.plan.want(Placement(publisher_sid, track))
            return True
        assert self._subscriber is not None
        codec = track.receiver.codec
        red = track.receiver.red
        kind = track_kind(track)
        extensions: tuple[tuple[int, str], ...] = ((MID_EXTENSION_ID, MID_EXTENSION_URI),)
        codecs: tuple[sdp_media.Codec, ...] = (red, codec) if red is not None else (codec,)
        rtx_ssrc = 0
        if kind == "video":
            # RTX for retransmissions and probe padding; transport-wide numbers for the
            # subscriber's feedback (sfu/congestion.py).
            codecs = (codec, _rtx_for(codec))
            rtx_ssrc = _new_ssrc()
            if self.congestion.enabled:
                extensions += ((TWCC_EXTENSION_ID, sdp_media.TWCC_URI),)
        outgoing = sdp_media.OutgoingTrack(
            kind=kind,
            mid=self._subscriber.next_mid(),
            # RED first when the publisher sends it, as in the publisher's answer.
            codecs=codecs,
            extensions=extensions,
            stream_id=f"{publisher_sid}|{track.sid}",
            track_id=track.sid,
            ssrc=_new_ssrc(),
            rtx_ssrc=rtx_ssrc,
        )
        self._add_downtrack(track, subscriber_sid, outgoing)
        self._subscriber.add_track(outgoing)
        return True

    def _add_downtrack(
        self, track: PublishedTrack, subscriber_sid: str, outgoing: sdp_media.OutgoingTrack
    ) -> DownTrack:
        receiver = track.receiver
        assert receiver is not None
        pc = self._subscriber_pc
        downtrack = DownTrack(outgoing, pc.rtp_sink, pc.send_rtcp, receiver)
        downtrack.published = track
        # Nothing is forwarded until the subscriber's answer has the track (LiveKit binds a
        # downtrack on the answer): a keyframe sent before the client knows the m= section is
        # dropped by it, and libwebrtc then waits for the next one.
        downtrack.bound = False
        self.downtracks[track.sid] = downtrack
        if track.simulcast is not None:
            track.simulcast.subscribe(
                subscriber_sid, downtrack, self._max_layer(track), self._clock()
            )
        else:
            receiver.downtracks[subscriber_sid] = downtrack
        if track.svc is not None:
            track.svc.subscribe(subscriber_sid, downtrack, self._max_layer(track), self._clock())
        self._counters.add_downtrack(downtrack)
        self._downtrack_by_ssrc[outgoing.ssrc] = downtrack
        settings = self._settings.get(track.sid)
        if settings is not None:
            downtrack.set_disabled(settings.disabled)
        return downtrack

    def _max_layer(self, track: PublishedTrack) -> int:
        """The highest simulcast layer this subscriber wants of ``track``: from its settings,
        else HIGH, or LOW with adaptive stream until the element's size is known (LiveKit's
        initial subscriber settings)."""
        layered = track.layered
        assert layered is not None
        settings = self._settings.get(track.sid)
        if settings is None:
            low, high = models.VideoQuality.LOW, models.VideoQuality.HIGH
            return layered.max_layer_for(low if self.adaptive_stream else high, 0, 0)
        return layered.max_layer_for(settings.quality, settings.width, settings.height)

    def update_settings(self, settings: rtc.UpdateTrackSettings, subscriber_sid: str) -> None:
        """A subscriber's ``UpdateTrackSettings``: ``disabled`` pauses its downtracks, and the
        quality or element size caps the simulcast layer it gets."""
        for track_sid in settings.track_sids:
            if track_sid not in self.downtracks and len(self._settings) >= MAX_KEPT_SETTINGS:
                continue  # settings for tracks never subscribed: bounded
            self._settings[track_sid] = settings
            downtrack = self.downtracks.get(track_sid)
            if downtrack is None:
                continue
            downtrack.set_disabled(settings.disabled)
            layered = downtrack.receiver.simulcast or downtrack.receiver.svc
            if layered is not None:
                layer = layered.max_layer_for(settings.quality, settings.width, settings.height)
                layered.set_max_layer(subscriber_sid, layer, self._clock())

    def unsubscribe(
        self, track_sid: str, subscriber_sid: str, track: PublishedTrack | None
    ) -> bool:
        if self.plan is not None and self.plan.forget(track_sid):
            return False
        downtrack = self._remove_downtrack(track_sid, subscriber_sid, track)
        if downtrack is None:
            return False
        if self.plan is not None:
            self.plan.release(downtrack.outgoing.mid)
            return True
        assert self._subscriber is not None
        self._subscriber.stop_track(downtrack.outgoing)
        return True

    # --- single peer connection mode ---------------------------------------------------------

    def place(
        self, offer: sdp.SessionDescription, subscriber_sid: str
    ) -> dict[str, sdp_media.OutgoingTrack]:
        """Put waiting subscriptions on the receive-only sections of the client's ``offer``;
        returns the track each such section carries, by mid. A track the client cannot decode
        is no longer subscribed, and ``on_refused`` is told, as for a rejected section."""
        assert self.plan is not None
        lost, placed, refused = self.plan.apply_offer(offer)
        for placement in lost:
            # A section the client no longer offers: the subscription waits for another.
            self._remove_downtrack(placement.track.sid, subscriber_sid, placement.track)
        for item in placed:
            track = item.placement.track
            extensions = item.section.extensions
            if not self.congestion.enabled:
                extensions = tuple(e for e in extensions if e[1] != sdp_media.TWCC_URI)
            outgoing = sdp_media.OutgoingTrack(
                kind=item.section.kind,
                mid=item.section.mid,
                codecs=item.codecs,
                extensions=extensions,
                stream_id=f"{item.placement.publisher_sid}|{track.sid}",
                track_id=track.sid,
                ssrc=_new_ssrc(),
                rtx_ssrc=_new_ssrc() if any(_is_rtx(c) for c in item.codecs) else 0,
            )
            downtrack = self._add_downtrack(track, subscriber_sid, outgoing)
            # RED goes through only where the client's section kept it (sfu/single_pc.py).
            downtrack.red_accepted = item.codecs[0].name.lower() == "red"
        outgoing_by_mid = {
            mid: self.downtracks[p.track.sid].outgoing
            for mid, p in self.plan.assigned.items()
            if p.track.sid in self.downtracks
        }
        for placement in refused:
            if self.on_refused is not None:
                self.on_refused(placement.track.sid)
        return outgoing_by_mid

    def _remove_downtrack(
        self, track_sid: str, subscriber_sid: str, track: PublishedTrack | None
    ) -> DownTrack | None:
        downtrack = self.downtracks.pop(track_sid, None)
        if downtrack is None:
            return None
        if track is not None:
            track.remove_subscriber(subscriber_sid)
        self._settings.pop(track_sid, None)
        self._downtrack_by_ssrc.pop(downtrack.outgoing.ssrc, None)
        self._counters.retire_downtrack(downtrack)
        self._subscriber_pc.forget_outgoing(downtrack.outgoing.ssrc, downtrack.outgoing.rtx_ssrc)
        return downtrack

    def answered(self) -> None:
        """Our answer to the client's offer is out: the tracks it placed start flowing."""
        assert self.plan is not None
        for placement in self.plan.assigned.values():
            downtrack = self.downtracks.get(placement.track.sid)
            if downtrack is not None:
                downtrack.bind()
        self.plan.answered()

    def sections_needed(self) -> tuple[int, int]:
        return self.plan.sections_needed() if self.plan is not None else (0, 0)


def _new_ssrc() -> int:
    return secrets.randbelow(0xFFFFFFFE) + 1


def _is_rtx(codec: sdp_media.Codec) -> bool:
    return codec.name.lower() == "rtx"


def _rtx_for(codec: sdp_media.Codec) -> sdp_media.Codec:
    """An RTX payload type for ``codec`` in a section of its own (any other number will do)."""
    payload_type = codec.payload_type + 1 if codec.payload_type < 127 else 96
    return sdp_media.Codec(
        payload_type, "video/rtx", codec.clock_rate, fmtp=f"apt={codec.payload_type}"
    )
