"""Dynacast: tell a publisher which simulcast layers anyone wants (sans-IO, fed ``now``).

LiveKit (``rtc/dynacast/dynacastmanagervideo.go``) sends the publisher a
``SubscribedQualityUpdate`` with the highest quality any subscriber of a video track wants, so
the client stops encoding layers nobody watches (livekit-client with ``dynacast``, the Rust
SDK). A higher quality is asked for at once; a lower one, or none at all when nobody watches,
only once it has held for ``video.dynacast_pause_delay`` (5 s), so a subscriber that comes and
goes does not make the publisher toggle its encoders.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from livekit.protocol import models, rtc

logger = logging.getLogger(__name__)

#: LiveKit's ``dynacast_pause_delay``.
PAUSE_DELAY_S = 5.0
#: The quality livekit-client and the Rust SDK tie to each rid (``videoQualityForRid``).
QUALITY_BY_RID = {
    "q": models.VideoQuality.LOW,
    "h": models.VideoQuality.MEDIUM,
    "f": models.VideoQuality.HIGH,
}
_QUALITIES = (models.VideoQuality.LOW, models.VideoQuality.MEDIUM, models.VideoQuality.HIGH)


class Dynacast:
    """The highest layer one track's publisher is told to send.

    :param top_layer: the highest spatial layer published; the client starts with every layer
        on, so that is what it is taken to send until told otherwise.
    """

    __slots__ = ("_delay", "_lower_since", "_pending", "sent")

    def __init__(self, top_layer: int, delay: float = PAUSE_DELAY_S) -> None:
        self.sent = top_layer
        """The highest layer the publisher was last told (or assumed) to send; -1 for none."""
        self._delay = delay
        self._lower_since: float | None = None
        self._pending = top_layer

    def update(self, wanted: int, now: float) -> int | None:
        """``wanted``: the highest layer any subscriber wants now (-1: nobody). Returns the
        layer to tell the publisher, or None when nothing is to be sent yet."""
        if wanted > self.sent:
            self._lower_since = None
            self.sent = wanted
            return wanted
        if wanted == self.sent:
            self._lower_since = None
            return None
        if self._lower_since is None or wanted != self._pending:
            self._lower_since, self._pending = now, wanted
            return None
        if now - self._lower_since < self._delay:
            return None
        self._lower_since = None
        self.sent = wanted
        return wanted


class DynacastSender:
    """One layered track's dynacast: the subscribers' wishes in, updates to its publisher out.

    :param rid_by_layer: the rid of each spatial layer (simulcast); empty when the layers
        travel in one stream (SVC), where layer n is quality n.
    """

    def __init__(
        self,
        info: models.TrackInfo,
        top_layer: int,
        delay: float = PAUSE_DELAY_S,
        rid_by_layer: dict[int, str] | None = None,
    ) -> None:
        self.info = info
        self.top_layer = top_layer
        self.state = Dynacast(top_layer, delay)
        self.on_update: Callable[[rtc.SubscribedQualityUpdate], None] | None = None
        """Sends the publisher a ``SubscribedQualityUpdate`` (the participant's)."""
        self.on_top: Callable[[int], None] | None = None
        """Told the new highest layer instead, when the publisher is on another node (a
        forwarded copy's track, ``sfu/remote_forward.py``)."""
        self.remote: dict[str, int] = {}
        """The highest layer wanted in each room on another node the track is forwarded to."""
        self._rid_by_layer = rid_by_layer or {}

    def update(self, wanted_layers: Iterable[int], now: float) -> None:
        """``wanted_layers``: the highest layer each (enabled) subscriber wants."""
        wanted = max(wanted_layers, default=-1)
        if self.remote:
            wanted = max(wanted, *self.remote.values())
        top = self.state.update(wanted, now)
        if top is None:
            return
        if self.on_top is not None:
            self.on_top(top)
        if self.on_update is not None:
            logger.info("track %s: dynacast asks for layers up to %d", self.info.sid, top)
            mime = self.info.mime_type
            self.on_update(quality_update(self.info.sid, mime, self._rid_by_layer, top))


def quality_update(
    track_sid: str, mime_type: str, rid_by_layer: dict[int, str], top: int
) -> rtc.SubscribedQualityUpdate:
    """The update enabling every quality up to layer ``top`` (-1: none), per quality as the
    clients match them to their encodings (by rid), both in LiveKit's per-codec form (which
    livekit-client reads) and the older flat list."""
    rid = rid_by_layer.get(top, "")
    highest = QUALITY_BY_RID.get(rid, top) if top >= 0 else -1
    qualities = [
        rtc.SubscribedQuality(quality=quality, enabled=quality <= highest) for quality in _QUALITIES
    ]
    codec = mime_type.split("/")[-1].lower()
    return rtc.SubscribedQualityUpdate(
        track_sid=track_sid,
        subscribed_qualities=qualities,
        subscribed_codecs=[rtc.SubscribedCodec(codec=codec, qualities=qualities)],
    )
