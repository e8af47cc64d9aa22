"""Scalable VP9 (SVC): one stream carrying every spatial layer; each subscriber gets the layers
up to the one it asks for (sans-IO: fed packets and ``now``).

livekit-client sends VP9 as one stream in ``L3T3_KEY`` mode: three spatial layers, each
picture's layer frames in order, the upper layers predicted from the lower ones only at a
keyframe. The VP9 payload descriptor names each packet's spatial layer (RFC 9628), so per
packet, once, the layer is read and each group of subscribers that wants it (everyone whose
layer is at least the packet's) gets it in one C fan-out; the groups below skip it, their
numbering closing over the gap. The last packet of a subscriber's top layer carries the marker
bit, as the publisher marks the end of a whole picture (LiveKit's VP9 selector does the same).
A subscriber moves down at the start of any picture and up only at a keyframe, when the layers
it adds can be decoded; it starts at a keyframe too, which is asked for while it waits.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from livekit.protocol import models

from protocol.keyframes import LAYER_BEGIN, LAYER_END, PICTURE_KEYFRAME, vp9_layers
from sfu.dynacast import PAUSE_DELAY_S, DynacastSender
from sfu.fanout import fanout, skip
from sfu.simulcast import CHECK_INTERVAL_S, max_layer_for

if TYPE_CHECKING:
    from sfu.downtrack import DownTrack
    from sfu.receiver import TrackReceiver

logger = logging.getLogger(__name__)

#: LiveKit's most spatial layers (``DefaultMaxLayerSpatial`` + 1).
SPATIAL_LAYERS = 3


class SvcSubscriber:
    """The highest layer one subscriber wants, and the one it gets (-1: none yet)."""

    __slots__ = ("current", "max_layer")

    def __init__(self, max_layer: int) -> None:
        self.max_layer = max_layer
        self.current = -1


class SvcTrack:
    """The subscribers of one VP9 track, grouped by the highest layer they get."""

    def __init__(self, info: models.TrackInfo, dynacast_delay: float = PAUSE_DELAY_S) -> None:
        self.info = info
        self.groups: dict[int, dict[str, DownTrack]] = {}
        """Highest spatial layer -> the downtracks that get the layers up to it."""
        self._subscribers: dict[str, tuple[DownTrack, SvcSubscriber]] = {}
        self.next_check = 0.0
        self.dynacast = DynacastSender(info, SPATIAL_LAYERS - 1, dynacast_delay)
        self._log = logging.LoggerAdapter(logger, {"track": info.sid})

    # --- subscribers -------------------------------------------------------------------

    def subscribe(
        self, subscriber_sid: str, downtrack: DownTrack, max_layer: int, now: float
    ) -> None:
        self._subscribers[subscriber_sid] = (downtrack, SvcSubscriber(max_layer))
        downtrack.needs_keyframe = False  # it starts on a keyframe anyway
        self.next_check = 0.0
        self.update_dynacast(now)

    def unsubscribe(self, subscriber_sid: str) -> None:
        self._subscribers.pop(subscriber_sid, None)
        for group in self.groups.values():
            group.pop(subscriber_sid, None)

    def set_max_layer(self, subscriber_sid: str, max_layer: int, now: float) -> None:
        entry = self._subscribers.get(subscriber_sid)
        if entry is not None:
            entry[1].max_layer = max_layer
            self.next_check = 0.0
        self.update_dynacast(now)

    def max_layer_for(self, quality: int, width: int, height: int) -> int:
        return max_layer_for(self.info, SPATIAL_LAYERS, quality, width, height)

    def current_layer(self, subscriber_sid: str) -> int:
        entry = self._subscribers.get(subscriber_sid)
        return entry[1].current if entry is not None else -1

    # --- the packet path ---------------------------------------------------------------

    def forward(
        self,
        receiver: TrackReceiver,
        packet: bytes,
        header: int,
        end: int,
        sequence: int,
        timestamp: int,
        ssrc: int,
        now: float,
    ) -> None:
        """One packet of the track: to every group that wants its layer, skipped by the rest."""
        if now >= self.next_check:
            self._check(receiver, now)
        layers = vp9_layers(packet, header, end)
        if layers is None:
            return
        spatial, _, flags = layers
        if spatial == 0 and flags & LAYER_BEGIN:  # the base layer's first packet: a new picture
            self._move(bool(flags & PICTURE_KEYFRAME))
        for top, group in self.groups.items():
            if not group:
                continue
            if top >= spatial:
                marker = top == spatial and bool(flags & LAYER_END)
                fanout(packet, header, end, sequence, timestamp, ssrc, now, group, marker)
            else:
                skip(sequence, ssrc, group)

    def _move(self, keyframe: bool) -> None:
        """At a picture start: down at once, up (or in) only at a keyframe."""
        for subscriber_sid, (downtrack, state) in self._subscribers.items():
            wanted = state.max_layer
            if wanted < 0 or wanted == state.current or not downtrack.bound:
                continue
            if keyframe or (state.current >= 0 and wanted < state.current):
                if state.current >= 0:
                    self.groups[state.current].pop(subscriber_sid, None)
                self.groups.setdefault(wanted, {})[subscriber_sid] = downtrack
                self._log.debug(
                    "subscriber %s: layer %d -> %d", subscriber_sid, state.current, wanted
                )
                state.current = wanted

    def _check(self, receiver: TrackReceiver, now: float) -> None:
        """Every check interval: a keyframe for whoever waits to move up, and dynacast."""
        self.next_check = now + CHECK_INTERVAL_S
        self.update_dynacast(now)
        waiting = any(
            downtrack.bound and downtrack.enabled and state.max_layer > state.current
            for downtrack, state in self._subscribers.values()
        )
        if waiting:
            receiver.request_keyframe(now)

    # --- dynacast ----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        self.update_dynacast(now)

    def update_dynacast(self, now: float) -> None:
        wishes = (s.max_layer for d, s in self._subscribers.values() if not d.disabled)
        self.dynacast.update(wishes, now)
