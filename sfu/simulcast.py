"""Which simulcast layer each subscriber gets (sans-IO: fed packet counts and ``now``).

A publisher's simulcast track is several streams of one picture at different sizes, its
spatial layers (rids ``q``, ``h``, ``f`` from lowest to highest in LiveKit's clients). Each
subscriber asks for a highest quality (``UpdateTrackSettings``: a quality, or the size of its
video element) and gets the best layer at or below it that is flowing, or the lowest flowing
one when none is. libwebrtc stops its highest layers first when bandwidth or CPU runs short
and restarts them later, so:

- a layer with no packets for :data:`STALE_AFTER_S` (longer for a layer that normally sends
  slowly, a static screen share) is treated as stopped, and its subscribers move down at once;
- a layer that (re)starts must flow for :data:`SETTLE_S` before anyone moves up to it, so a
  layer that flaps does not cost a keyframe each time.

The move itself happens on the target layer's next keyframe (``sfu/simulcast_track.py``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from livekit.protocol import models

#: LiveKit's rids, lowest layer first (``videolayerutils.go``); other rids keep their order in
#: the publisher's ``a=simulcast`` line, taken as lowest first too (livekit-client's order).
LIVEKIT_RID_ORDER = ("q", "h", "f")
#: How often layer activity is sampled and targets are revisited.
CHECK_INTERVAL_S = 0.1
#: A layer silent this long has stopped (at least; see :meth:`LayerActivity.flowing`).
STALE_AFTER_S = 0.5
#: A layer silent for this many of its usual gaps between packets has stopped.
STALE_GAPS = 2.0
#: Gaps longer than this are pauses, not the layer's usual pace.
LONGEST_USUAL_GAP_S = 3.0
#: A layer must flow this long before subscribers move up to it.
SETTLE_S = 1.0
#: LiveKit's tolerance when mapping a video element's size to a layer
#: (``layerSelectionTolerance``): a layer 10 % smaller than the element is good enough.
SIZE_TOLERANCE = 0.9
#: LiveKit's default layer heights when the publisher did not describe its layers.
DEFAULT_LAYER_SIZES = (180, 360)


def spatial_order(rids: Sequence[str]) -> dict[str, int]:
    """rid -> spatial layer (0 lowest), LiveKit's rids first in their order, then the rest in
    the publisher's order."""
    known = [rid for rid in LIVEKIT_RID_ORDER if rid in rids]
    others = [rid for rid in rids if rid not in LIVEKIT_RID_ORDER]
    return {rid: spatial for spatial, rid in enumerate(known + others)}


def choose_layer(max_layer: int, candidates: Collection[int]) -> int | None:
    """The highest candidate at or below ``max_layer``; the lowest above it when there is
    none (a subscriber that asked for LOW still sees a picture when only HIGH flows)."""
    if max_layer < 0 or not candidates:
        return None
    below = [layer for layer in candidates if layer <= max_layer]
    return max(below) if below else min(candidates)


def spatial_for_quality(quality: int, layer_count: int) -> int:
    """LOW, MEDIUM, HIGH -> spatial 0, 1, 2, clamped to the layers published; OFF -> -1."""
    if quality == models.VideoQuality.OFF:
        return -1
    return max(0, min(int(quality), layer_count - 1))


def quality_for_dimension(info: models.TrackInfo, width: int, height: int) -> int:
    """The quality a video element of ``width`` x ``height`` needs (LiveKit
    ``GetQualityForDimension``): the lowest layer whose size covers the element, less a 10 %
    tolerance, comparing heights (widths for portrait video)."""
    portrait = info.width < info.height
    original = info.width if portrait else info.height
    requested = width if portrait else height
    if not original:
        return models.VideoQuality.HIGH
    layers = sorted(info.layers, key=lambda layer: layer.quality)
    sizes = [(layer.width if portrait else layer.height) for layer in layers]
    if not sizes:
        sizes = [*DEFAULT_LAYER_SIZES, original]
    sizes += [original] * (3 - len(sizes))
    wanted = requested * SIZE_TOLERANCE
    for index, size in enumerate(sizes[:-1]):
        if size >= wanted and size != sizes[index + 1]:
            return index
    return len(sizes) - 1


def max_layer_for(
    info: models.TrackInfo, layer_count: int, quality: int, width: int, height: int
) -> int:
    """The highest layer a subscriber's settings allow: an element size when given (adaptive
    stream), else the quality (LiveKit ``UpdateTrackSettings`` handling)."""
    if width or height:
        quality = quality_for_dimension(info, width, height)
    return spatial_for_quality(quality, layer_count)


class LayerActivity:
    """Which spatial layers flow, sampled from each layer's received-packet count every check
    (no per-packet work: the receivers count packets anyway)."""

    __slots__ = ("_counts", "_gaps", "_last_seen", "_since")

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self._last_seen: dict[int, float] = {}
        self._since: dict[int, float] = {}
        """layer -> when its current run of packets began."""
        self._gaps: dict[int, float] = {}
        """layer -> smoothed time between samples that saw packets."""

    def sample(self, layer: int, count: int, now: float) -> None:
        if count == self._counts.get(layer, 0):
            return
        self._counts[layer] = count
        last = self._last_seen.get(layer)
        if last is None or now - last > self._stale_after(layer):
            self._since[layer] = now  # a new run of packets
        if last is not None and 0 < now - last <= LONGEST_USUAL_GAP_S:
            gap = self._gaps.get(layer, CHECK_INTERVAL_S)
            self._gaps[layer] = gap * 0.75 + (now - last) * 0.25
        self._last_seen[layer] = now

    def _stale_after(self, layer: int) -> float:
        return max(STALE_AFTER_S, STALE_GAPS * self._gaps.get(layer, 0.0))

    def flowing(self, now: float) -> set[int]:
        return {
            layer
            for layer, seen in self._last_seen.items()
            if now - seen <= self._stale_after(layer)
        }

    def settled(self, now: float) -> set[int]:
        """Flowing layers that have flowed for :data:`SETTLE_S`."""
        return {layer for layer in self.flowing(now) if now - self._since[layer] >= SETTLE_S}


#: No bandwidth limit on the layer.
UNLIMITED = 1 << 30


def layer_target(current: int, limit: int, flowing: frozenset[int], settled: frozenset[int]) -> int:
    """Where a subscriber on layer ``current`` (-1: none yet) that may have up to ``limit``
    should move: any flowing layer may replace a stopped or missing current one, or be moved
    down to; moving up needs a settled layer. -1: stay where it is."""
    if current in flowing:
        candidates = {layer for layer in flowing if layer <= current or layer in settled}
    else:
        candidates = set(flowing)
    chosen = choose_layer(limit, candidates)
    return -1 if chosen is None or chosen == current else chosen


class LayerSelector:
    """One subscriber's layer of one simulcast track: the highest it asked for (``max_layer``,
    -1 for none), the one it gets (``current``, -1 before the first) and the one it is moving
    to on that layer's next keyframe (``target``)."""

    __slots__ = ("allocated", "current", "max_layer", "target")

    def __init__(self, max_layer: int) -> None:
        self.max_layer = max_layer
        self.allocated = UNLIMITED
        """The highest layer the subscriber's bandwidth allows (``sfu/allocator.py``)."""
        self.current = -1
        self.target = -1

    @property
    def limit(self) -> int:
        """The highest layer it may have now: asked for and allowed by its bandwidth."""
        return min(self.max_layer, self.allocated)

    def retarget(self, flowing: Iterable[int], settled: Iterable[int]) -> int:
        """Revisit the target (:func:`layer_target`); returns it (-1: stay where it is)."""
        self.target = layer_target(self.current, self.limit, frozenset(flowing), frozenset(settled))
        return self.target

    def switched(self, layer: int) -> None:
        self.current = layer
        self.target = -1
