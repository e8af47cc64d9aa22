"""Dynacast: tell a publisher which simulcast layers anyone wants (sans-IO, fed ``now``).

LiveKit (``rtc/dynacast/dynacastmanagervideo.go``) sends the publisher a
``SubscribedQualityUpdate`` with the highest quality any subscriber of a video track wants, so
the client stops encoding layers nobody watches (livekit-client with ``dynacast``, the Rust
SDK). A higher quality is asked for at once; a lower one, or none at all when nobody watches,
only once it has held for ``video.dynacast_pause_delay`` (5 s), so a subscriber that comes and
goes does not make the publisher toggle its encoders.
"""

from __future__ import annotations

from livekit.protocol import models, rtc

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
