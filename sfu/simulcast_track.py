"""The layers of one simulcast track and where each of its subscribers is (sans-IO).

Every spatial layer the publisher sends has its own :class:`TrackReceiver` (its own packet
cache, loss statistics, NACKs and keyframe requests, as LiveKit keeps a buffer per layer).
A subscriber's downtrack sits in the ``downtracks`` of the layer it gets, so the C fan-out
of that layer's packets reaches it and no other layer's do. Moving it is done here, once per
switch, never per packet:

- :meth:`SimulcastTrack.check`, run from the packet path every :data:`CHECK_INTERVAL_S`,
  samples which layers flow and revisits each subscriber's target (``sfu/simulcast.py``); a
  subscriber with a target waits in that layer's ``switching`` and the layer is asked for a
  keyframe (throttled by the receiver, as LiveKit's keyframe requester repeats its PLI).
- :meth:`SimulcastTrack.on_keyframe`, called by the receiver when the first packet of a
  keyframe arrives while someone waits, moves the waiting downtracks onto that layer before
  the packet is fanned out; their munger continues the outgoing numbering across the change
  of SSRC (``sfu/munger.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from livekit.protocol import models

from protocol import rtcp
from sfu.dynacast import PAUSE_DELAY_S, DynacastSender
from sfu.receiver import RTCP_SENDER_SSRC
from sfu.simulcast import (
    CHECK_INTERVAL_S,
    LayerActivity,
    LayerSelector,
    layer_target,
    max_layer_for,
    spatial_order,
)

if TYPE_CHECKING:
    from sfu.downtrack import DownTrack
    from sfu.receiver import TrackReceiver

logger = logging.getLogger(__name__)


class SimulcastTrack:
    """One rid-simulcast track's layers (``receivers``, by spatial index) and subscribers.

    :param rids: the publisher's ``a=simulcast:send`` rids.
    :param info: the track's ``TrackInfo`` (its layers' sizes map element sizes to layers).
    """

    def __init__(
        self, rids: Sequence[str], info: models.TrackInfo, dynacast_delay: float = PAUSE_DELAY_S
    ) -> None:
        self.spatial_by_rid = spatial_order(rids)
        self.info = info
        self.receivers: dict[int, TrackReceiver] = {}
        self.activity = LayerActivity()
        self.next_check = 0.0
        """When the packet path should call :meth:`check` next (0: at the next packet)."""
        self._subscribers: dict[str, tuple[DownTrack, LayerSelector]] = {}
        self._checked_layers: tuple[frozenset[int], frozenset[int]] = (frozenset(), frozenset())
        """(flowing, settled) layers at the last check."""
        self._stale = True
        """A subscriber came, went or changed since the last check, or one still waits."""
        self._top_wish: int | None = None
        """The highest layer an enabled subscriber wants (None: to be counted again)."""
        rid_by_layer = {spatial: rid for rid, spatial in self.spatial_by_rid.items()}
        self.dynacast = DynacastSender(info, self.layer_count - 1, dynacast_delay, rid_by_layer)
        self._log = logging.LoggerAdapter(logger, {"track": info.sid})

    @property
    def layer_count(self) -> int:
        return len(self.spatial_by_rid)

    def add_layer(self, spatial: int, receiver: TrackReceiver) -> None:
        receiver.simulcast = self
        receiver.spatial = spatial
        self.receivers[spatial] = receiver
        self._changed()

    def _changed(self) -> None:
        """Revisit every subscriber's layer at the next packet."""
        self._stale = True
        self.next_check = 0.0

    def all_receivers(self) -> Iterator[TrackReceiver]:
        return iter(self.receivers.values())

    # --- subscribers -----------------------------------------------------------------------

    def subscribe(
        self, subscriber_sid: str, downtrack: DownTrack, max_layer: int, now: float
    ) -> None:
        """A new subscriber, on no layer until its first keyframe (LiveKit starts a simulcast
        downtrack on a keyframe of the layer it wants)."""
        self._subscribers[subscriber_sid] = (downtrack, LayerSelector(max_layer))
        # It starts on a keyframe, so its first packet needs no keyframe request of its own.
        downtrack.needs_keyframe = False
        self._changed()
        self._top_wish = None
        self.update_dynacast(now)

    def unsubscribe(self, subscriber_sid: str) -> None:
        self._subscribers.pop(subscriber_sid, None)
        self._top_wish = None
        for receiver in self.receivers.values():
            receiver.downtracks.pop(subscriber_sid, None)
            receiver.switching.pop(subscriber_sid, None)

    def set_max_layer(self, subscriber_sid: str, max_layer: int, now: float) -> None:
        """A subscriber's new highest layer (or its downtrack was enabled or disabled)."""
        entry = self._subscribers.get(subscriber_sid)
        if entry is not None and entry[1].max_layer != max_layer:
            entry[1].max_layer = max_layer
            self._changed()
        self._top_wish = None
        self.update_dynacast(now)

    def set_allocated(self, subscriber_sid: str, layer: int) -> None:
        """The highest layer the subscriber's bandwidth allows now."""
        entry = self._subscribers.get(subscriber_sid)
        if entry is not None and entry[1].allocated != layer:
            entry[1].allocated = layer
            self._changed()

    def wanted_layer(self, subscriber_sid: str) -> int:
        entry = self._subscribers.get(subscriber_sid)
        return entry[1].max_layer if entry is not None else -1

    def layer_bitrates(self) -> list[float]:
        """bps each spatial layer arrives at (0: not flowing), lowest first."""
        return [
            float(self.receivers[layer].bitrate) if layer in self.receivers else 0.0
            for layer in range(self.layer_count)
        ]

    def update_dynacast(self, now: float) -> None:
        """Tell dynacast what the subscribers want (counted again after a change, and every
        tick, since a downtrack may be disabled on its own)."""
        if self._top_wish is None:
            enabled = (s.max_layer for d, s in self._subscribers.values() if not d.disabled)
            self._top_wish = max(enabled, default=-1)
        self.dynacast.update((self._top_wish,), now)

    def max_layer_for(self, quality: int, width: int, height: int) -> int:
        return max_layer_for(self.info, self.layer_count, quality, width, height)

    def current_layer(self, subscriber_sid: str) -> int:
        entry = self._subscribers.get(subscriber_sid)
        return entry[1].current if entry is not None else -1

    # --- called from the packet path -------------------------------------------------------

    def check(self, now: float) -> None:
        """Sample which layers flow and move each subscriber's target accordingly.

        This runs every :data:`CHECK_INTERVAL_S` for every subscriber of every simulcast
        track, so it does as little as it can: nothing when the layers that flow, the
        subscribers' states and their targets are as at the last check (a meeting's usual
        case), and one target computed per (current layer, limit) pair otherwise."""
        self.next_check = now + CHECK_INTERVAL_S
        self.update_dynacast(now)  # a downgrade may have come due (cheap: the wish is kept)
        for spatial, receiver in self.receivers.items():
            self.activity.sample(spatial, receiver.stats.received, now)
        layers = (frozenset(self.activity.flowing(now)), frozenset(self.activity.settled(now)))
        if layers == self._checked_layers and not self._stale:
            return
        self._checked_layers, self._stale = layers, False
        flowing, settled = layers
        targets: dict[tuple[int, int], int] = {}
        for subscriber_sid, (downtrack, selector) in self._subscribers.items():
            state = (selector.current, selector.limit)
            target = targets.get(state)
            if target is None:
                target = targets[state] = layer_target(*state, flowing, settled)
            previous, selector.target = selector.target, target
            if target >= 0:
                self._stale = True  # still waiting for a keyframe: asked again next check
            if target != previous:
                if previous in self.receivers:
                    self.receivers[previous].switching.pop(subscriber_sid, None)
                if target in self.receivers:
                    self.receivers[target].switching[subscriber_sid] = downtrack
            if target in self.receivers and downtrack.bound and downtrack.enabled:
                self.receivers[target].request_keyframe(now)

    def on_keyframe(self, receiver: TrackReceiver, timestamp: int) -> None:
        """The first packet of a keyframe (stamped ``timestamp``) on ``receiver``'s layer: its
        waiting subscribers move onto it before the packet is fanned out."""
        for subscriber_sid, downtrack in list(receiver.switching.items()):
            if not downtrack.bound:
                continue  # a keyframe the client could not receive yet would be wasted
            del receiver.switching[subscriber_sid]
            _expect_timeline(downtrack, receiver, timestamp)
            downtrack.receiver.downtracks.pop(subscriber_sid, None)
            receiver.downtracks[subscriber_sid] = downtrack
            downtrack.receiver = receiver
            selector = self._subscribers[subscriber_sid][1]
            self._log.debug(
                "subscriber %s: layer %d -> %d", subscriber_sid, selector.current, receiver.spatial
            )
            selector.switched(receiver.spatial)
            self._stale = True

    # --- RTCP to the publisher -------------------------------------------------------------

    def tick(self, now: float, remb: bool = True) -> None:
        """Once a second: each layer's Receiver Report and NACKs, and one REMB for the whole
        track (libwebrtc applies a REMB to the publisher's whole send rate, so a REMB sized
        for one layer would starve the others; none when ``remb`` is off: a publisher with
        transport-cc estimates for itself); dynacast downgrades come due."""
        self._top_wish = None
        self.update_dynacast(now)
        # One compound packet for every layer: RFC 3550 6.1 lets further RR packets follow
        # the first, and one SRTCP protect and send is what a report costs most.
        compound, bitrate, worst_loss, ssrcs = b"", 0, 0, []
        for receiver in self.receivers.values():
            report, fraction, received_bps = receiver.report(now, remb=False)
            compound += report
            receiver.retry_nacks()
            bitrate += received_bps
            worst_loss = max(worst_loss, fraction)
            if receiver.media_ssrc:
                ssrcs.append(receiver.media_ssrc)
        if not ssrcs:
            return
        primary = self.receivers[min(self.receivers)]
        if remb:
            estimate = primary.estimator.update(worst_loss, bitrate)
            compound += rtcp.remb(RTCP_SENDER_SSRC, estimate, ssrcs)
        primary.send_rtcp(compound)


def _expect_timeline(downtrack: DownTrack, layer: TrackReceiver, timestamp: int) -> None:
    """Tell ``downtrack`` where on its timeline ``layer``'s packet stamped ``timestamp`` falls,
    from the two layers' Sender Reports (RFC 3550 6.4.1: each pairs an NTP time with the
    stream's RTP time), as LiveKit keeps a subscriber's timestamps continuous across a switch.
    Without a report from both layers, the munger estimates by the wall clock."""
    old, new = downtrack.receiver.stats, layer.stats
    if not (downtrack.packets and old.last_sr_ntp and new.last_sr_ntp):
        return
    clock = layer.codec.clock_rate
    since_report = (timestamp - new.last_sr_rtp) & 0xFFFFFFFF
    if since_report >= 1 << 31:
        since_report -= 1 << 32
    captured = new.last_sr_ntp / (1 << 32) + since_report / clock
    on_old = old.last_sr_rtp + round((captured - old.last_sr_ntp / (1 << 32)) * clock)
    out = downtrack.translate_timestamp(on_old & 0xFFFFFFFF)
    downtrack.expect_source(layer.media_ssrc, timestamp, out)
