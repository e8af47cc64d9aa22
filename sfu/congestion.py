"""One subscriber's congestion control: its feedback in, its video downtracks' layers and
pauses out, and padding to probe with (LiveKit's ``StreamAllocator`` on a subscriber
transport).

Sans-IO: fed RTCP and ``now``; it calls back to pause or resume a track (the participant
sends ``StreamStateUpdate``) and says how much padding to send. Runs per feedback packet
(about ten a second), never per media packet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from livekit.protocol import models

from config.build import duration_seconds
from config.schema import CongestionControlConfig
from protocol import rtcp
from sfu.allocator import (
    CAMERA_PRIORITY,
    PAUSED,
    SCREEN_SHARE_PRIORITY,
    USABLE_SHARE,
    Demand,
    ProbeSchedule,
    allocate,
    cost,
    next_step,
)
from sfu.bwe import SendSideEstimator
from sfu.counters import MediaTotals
from sfu.downtrack import DownTrack
from sfu.fanout import Sink
from sfu.twcc import FMT_TWCC

logger = logging.getLogger(__name__)

#: How often the layers are revisited (feedback comes about every 100 ms).
ALLOCATE_INTERVAL_S = 0.25
#: A paused track stays paused at least this long (LiveKit ``paused_min_wait``).
PAUSED_MIN_WAIT_S = 5.0
#: The estimate commits on its own once this far above the committed capacity.
PASSIVE_COMMIT = 1.5
#: How long after a probe its padding may still be what the feedback reports.
PROBE_AFTERMATH_S = 1.0
#: After a cut of the estimate, no probe starts for this long.
CONGESTED_FOR_S = 1.0
#: Padding packets carry at most this much (LiveKit pads with up to 255 bytes).
PADDING_BYTES = 255


@dataclass(frozen=True)
class CongestionSettings:
    """``rtc.congestion_control``."""

    enabled: bool = True
    allow_pause: bool = False
    probe: bool = True
    """``stream_allocator.probe_mode`` padding (LiveKit's default); False: never probe."""
    probe_overage: float = 1.2
    probe_min_bps: float = 200_000
    paused_min_wait: float = PAUSED_MIN_WAIT_S


def carries_estimate(packet: bytes) -> bool:
    """Whether a subscriber's RTCP holds transport-cc feedback or a REMB (an audio-only
    subscriber's receiver reports alone need no estimator)."""
    return any(
        (packet_type == rtcp.RTPFB and fmt == FMT_TWCC)
        or (packet_type == rtcp.PSFB and fmt == rtcp.FMT_REMB)
        for packet_type, fmt, _ in rtcp.packets(packet)
    )


def congestion_settings(config: CongestionControlConfig) -> CongestionSettings:
    allocator = config.stream_allocator
    return CongestionSettings(
        enabled=config.enabled,
        allow_pause=config.allow_pause,
        probe=allocator.probe_mode.lower() == "padding",
        probe_overage=allocator.probe_overage_pct / 100,
        probe_min_bps=float(allocator.probe_min_bps),
        paused_min_wait=duration_seconds(allocator.paused_min_wait),
    )


StreamStateSender = Callable[[DownTrack, bool], None]
"""Tells the subscriber a downtrack was paused (True) or resumed (False)."""


class SubscriberBandwidth:
    """The estimate, the allocation and the probing of one subscriber transport."""

    def __init__(
        self,
        sink: Sink,
        settings: CongestionSettings,
        on_stream_state: StreamStateSender,
        subscriber_sid: str,
        totals: MediaTotals | None = None,
    ) -> None:
        self._sink = sink
        self.settings = settings
        self._on_stream_state = on_stream_state
        self._totals = totals
        self._subscriber_sid = subscriber_sid
        self.estimator = SendSideEstimator()
        self._probe = ProbeSchedule(settings.probe_overage, settings.probe_min_bps)
        self._last_update = 0.0
        self._allocated_at_estimate = 0.0
        self._paused_at: dict[str, float] = {}
        self._padding_credit = 0.0
        self._last_padding = 0.0
        self.allocation: dict[str, int] = {}
        self.committed = self.estimator.estimate
        """The capacity layers are allocated from (:meth:`_commit`)."""
        self.feedback_packets = 0
        self._reported = 0
        self._reported_received = 0
        self.pauses = 0

    @property
    def probing(self) -> bool:
        return self._probe.rate > 0

    # --- feedback --------------------------------------------------------------------------

    def on_rtcp(self, packet: bytes, now: float, downtracks: Mapping[str, DownTrack]) -> None:
        """Read transport-cc feedback or REMB from the subscriber's RTCP."""
        seen = False
        for packet_type, fmt, body in rtcp.packets(packet):
            remb = rtcp.remb_estimate(packet_type, fmt, body)
            if remb is not None:
                self.estimator.on_remb(remb[0])
                seen = True
            elif packet_type == rtcp.RTPFB and fmt == FMT_TWCC and len(body) >= 16:
                groups, received, lost, received_bytes = self._sink.twcc_feedback(body[8:])
                self._reported += received + lost
                self._reported_received += received
                # A probe's padding is still queued on the path a moment after it ends: the
                # queue and losses it leaves are the probe's, not the media's.
                after_probe = now - self._probe.ended_at < PROBE_AFTERMATH_S
                self.estimator.probing = self.probing or after_probe
                self.estimator.on_feedback(groups, received, lost, received_bytes, now)
                self.feedback_packets += 1
                seen = True
        if seen and now >= self._last_update + ALLOCATE_INTERVAL_S and self._worth_revisiting(now):
            self.update(now, downtracks)

    def _worth_revisiting(self, now: float) -> bool:
        """A steady estimate needs no allocation four times a second: only when it moved by
        5 % since the last, or a second has passed (layer rates move too)."""
        estimate = self.estimator.estimate
        moved = abs(estimate - self._allocated_at_estimate) > 0.05 * self._allocated_at_estimate
        return moved or self.probing or now >= self._last_update + 1.0

    # --- allocation ------------------------------------------------------------------------

    def tick(self, now: float, downtracks: Mapping[str, DownTrack]) -> None:
        """Once a second: revisit the allocation when no feedback has (all video paused, or
        the link silent), so a probe can still start."""
        if now >= self._last_update + ALLOCATE_INTERVAL_S + 1.0 and any(
            d.outgoing.kind == "video" for d in downtracks.values()
        ):
            self.update(now, downtracks)
        if not logger.isEnabledFor(logging.DEBUG):
            return
        logger.debug(
            "subscriber %s: %d feedback (%d reported, %d received, next %d), estimate %d (%s),"
            " received %d, probing %d",
            self._subscriber_sid,
            self.feedback_packets,
            self._reported,
            self._reported_received,
            self._sink.twcc_next,
            self.estimator.estimate,
            self.estimator.trendline.usage.value,
            self.estimator.received_bps(now),
            self._probe.rate,
        )

    def update(self, now: float, downtracks: Mapping[str, DownTrack]) -> None:
        """Share the committed capacity among the video downtracks and decide on probing."""
        video = {sid: d for sid, d in downtracks.items() if d.outgoing.kind == "video"}
        demands = [self._demand(sid, d) for sid, d in video.items()]
        cut = self.estimator.last_decrease
        congested = self.estimator.probe_failed or (cut is not None and now - cut < CONGESTED_FOR_S)
        self.estimator.probe_failed = False
        capacity = self._commit()
        self._allocated_at_estimate = self.estimator.estimate
        layers = allocate(capacity, demands, allow_pause=self.settings.allow_pause)
        if cut is None or cut <= self._last_update:
            # No cut since the last allocation: what each track has, it keeps (up to what its
            # subscriber still wants). Layer rates swing with keyframes; only a falling
            # estimate takes layers away.
            for demand in demands:
                kept = min(self.allocation.get(demand.track_sid, PAUSED), demand.wanted_layer)
                layers[demand.track_sid] = max(layers[demand.track_sid], kept)
        self._last_update = now
        for sid, layer in layers.items():
            self._apply(sid, video[sid], layer, now)
        if layers != self.allocation:
            self._log_allocation(now, capacity, layers, demands)
        self.allocation = layers
        if self.settings.probe and any(_can_pad(d) for d in video.values()):
            self._plan_probe(now, demands, layers, capacity, congested)

    def _commit(self) -> float:
        """The capacity allocated (LiveKit's committed channel capacity): it follows the
        estimate down at once, but up only when a probe has shown the room, or when the
        estimate has grown far past it on its own. GCC's estimate creeps above what the link
        carries until a queue shows; layers raised on that creep would be taken back at the
        next overuse, each time with a keyframe."""
        estimate = self.estimator.estimate
        grown = estimate >= PASSIVE_COMMIT * self.committed
        if estimate < self.committed or grown or self._probe.take_success():
            self.committed = estimate
        return self.committed

    def _plan_probe(
        self,
        now: float,
        demands: list[Demand],
        layers: dict[str, int],
        capacity: float,
        congested: bool,
    ) -> None:
        used = cost(demands, layers)
        step = next_step(demands, layers)
        goal = 0.0
        if step:
            # Probe for the next step up (LiveKit); while probes keep succeeding, as far
            # towards everything wanted as twice the capacity (libwebrtc's exponential
            # probing): a subscriber coming back from a bad patch climbs in a few probes, and
            # one on a full link is not buried under big probes.
            goal = used + step
            if self._probe.ramping:
                wanted = cost(demands, {d.track_sid: d.wanted_layer for d in demands})
                goal = max(goal, min(wanted, 2 * capacity))
            goal /= USABLE_SHARE
        self._probe.update(now, self.estimator.estimate, capacity, goal, used, congested)

    def _log_allocation(
        self, now: float, capacity: float, layers: dict[str, int], demands: list[Demand]
    ) -> None:
        logger.debug(
            "subscriber %s: capacity %d bps (estimate %d, delay %d, loss %d, received %d, %s):"
            " layers %s of %s",
            self._subscriber_sid,
            capacity,
            self.estimator.estimate,
            self.estimator.delay_based,
            self.estimator.loss_based,
            self.estimator.received_bps(now),
            self.estimator.trendline.usage.value,
            layers,
            [[int(r) for r in d.layer_bitrates] for d in demands],
        )

    def _demand(self, track_sid: str, downtrack: DownTrack) -> Demand:
        published = downtrack.published
        screen = published is not None and published.info.source in _SCREEN_SOURCES
        priority = SCREEN_SHARE_PRIORITY if screen else CAMERA_PRIORITY
        layered = downtrack.receiver.simulcast
        if downtrack.disabled:
            wanted = -1
        elif layered is not None:
            wanted = layered.wanted_layer(self._subscriber_sid)
        else:
            wanted = 0
        if layered is not None:
            rates: list[float] = layered.layer_bitrates()
        else:
            rates = [float(downtrack.receiver.bitrate)]
        return Demand(track_sid, priority, wanted, rates)

    def _apply(self, track_sid: str, downtrack: DownTrack, layer: int, now: float) -> None:
        simulcast = downtrack.receiver.simulcast
        if layer != PAUSED and simulcast is not None:
            simulcast.set_allocated(self._subscriber_sid, layer)
        if downtrack.disabled:
            return  # the subscriber's own choice: nothing to tell it
        paused = layer == PAUSED
        if paused and not downtrack.paused:
            self._paused_at[track_sid] = now
            self.pauses += 1
            if self._totals is not None:
                self._totals.congestion_pauses += 1
            downtrack.set_paused(True)
            self._on_stream_state(downtrack, True)
        elif not paused and downtrack.paused:
            if now - self._paused_at.get(track_sid, 0.0) < self.settings.paused_min_wait:
                return  # LiveKit keeps a paused track down a while: no flapping
            downtrack.set_paused(False)
            self._on_stream_state(downtrack, False)

    # --- probing ---------------------------------------------------------------------------

    def pad(self, now: float, downtracks: Iterable[DownTrack]) -> int:
        """Send the padding due since the last call while probing; bytes sent."""
        rate = self._probe.rate
        elapsed = min(now - self._last_padding, 0.1) if self._last_padding else 0.02
        self._last_padding = now
        if not rate:
            self._padding_credit = 0.0
            return 0
        self._padding_credit += rate / 8 * elapsed
        count = int(self._padding_credit // PADDING_BYTES)
        if count <= 0:
            return 0
        carrier = next((d for d in downtracks if _can_pad(d)), None)
        if carrier is None:
            return 0
        sent = carrier.pad(min(count, 64), PADDING_BYTES, now)
        self._padding_credit -= sent * PADDING_BYTES
        return sent * PADDING_BYTES


_SCREEN_SOURCES = (models.TrackSource.SCREEN_SHARE,)


def _can_pad(downtrack: DownTrack) -> bool:
    """Padding goes on a video downtrack's RTX stream, paused or not (a subscriber whose
    video is all paused must still be probed, or it would never get it back)."""
    return (
        downtrack.outgoing.kind == "video" and downtrack.bound and downtrack.outgoing.rtx_ssrc != 0
    )
