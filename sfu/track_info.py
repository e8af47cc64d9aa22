"""What the room is told of a published track: ``TrackInfo`` from the client's
``AddTrackRequest`` (LiveKit ``participant.go AddTrack``), and LiveKit's track source names.

Every track's info goes to everyone in the room, so what one client may put there is bounded
before anything is made of it.
"""

from __future__ import annotations

from collections.abc import Iterable

from livekit.protocol import models, rtc

from protocol.ids import TRACK_PREFIX, new_id
from sfu.limits import MAX_ADD_TRACK_REQUEST_BYTES, MAX_TRACK_NAME_LENGTH
from sfu.simulcast import LIVEKIT_RID_ORDER

#: LiveKit's lower-case source names (``canPublishSources``) and the protobuf enum.
SOURCES_BY_NAME = {
    "camera": models.TrackSource.CAMERA,
    "microphone": models.TrackSource.MICROPHONE,
    "screen_share": models.TrackSource.SCREEN_SHARE,
    "screen_share_audio": models.TrackSource.SCREEN_SHARE_AUDIO,
}
_NAMES_BY_SOURCE = {source: name for name, source in SOURCES_BY_NAME.items()}
#: Codecs whose layers travel in one stream (scalable video coding, not simulcast).
SVC_MIME_TYPES = frozenset({"video/vp9", "video/av1"})
_RID_BY_QUALITY = dict(
    zip(
        (models.VideoQuality.LOW, models.VideoQuality.MEDIUM, models.VideoQuality.HIGH),
        LIVEKIT_RID_ORDER,
        strict=True,
    )
)


class PublishError(Exception):
    """An AddTrackRequest refused; ``reason`` goes back in a RequestResponse."""

    def __init__(self, reason: rtc.RequestResponse.Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def track_info(request: rtc.AddTrackRequest, can_publish_source: bool) -> models.TrackInfo:
    """The new track's info, with a fresh sid; PublishError when it may not be published."""
    if request.type == models.TrackType.DATA:
        raise PublishError(rtc.RequestResponse.UNSUPPORTED_TYPE, "data tracks are not supported")
    if not can_publish_source:
        raise PublishError(rtc.RequestResponse.NOT_ALLOWED, "not allowed to publish this source")
    if len(request.name.encode()) > MAX_TRACK_NAME_LENGTH:
        raise PublishError(rtc.RequestResponse.LIMIT_EXCEEDED, "track name exceeds limits")
    if request.ByteSize() > MAX_ADD_TRACK_REQUEST_BYTES:
        raise PublishError(rtc.RequestResponse.LIMIT_EXCEEDED, "track request exceeds limits")
    info = models.TrackInfo(
        sid=new_id(TRACK_PREFIX),
        type=request.type,
        name=request.name,
        muted=request.muted,
        width=request.width,
        height=request.height,
        source=request.source,
        disable_red=request.disable_red,
        stream=request.stream,
    )
    kind = "audio" if request.type == models.TrackType.AUDIO else "video"
    info.layers.extend(_layers(request.layers))
    for codec in request.simulcast_codecs:
        # The client names the codec it will send (LiveKit fills TrackInfo from it), with its
        # own layers or the request's.
        mime = codec.codec if "/" in codec.codec else f"{kind}/{codec.codec}"
        layers = _layers(codec.layers or request.layers)
        info.codecs.append(models.SimulcastCodecInfo(mime_type=mime, cid=codec.cid, layers=layers))
    if info.codecs:
        info.mime_type = info.codecs[0].mime_type
    # LiveKit's compatibility flag: the primary codec sends several layers as separate streams
    # (simulcast, not SVC). The SDKs only offer quality choices when it is set.
    primary = info.codecs[0] if info.codecs else None
    layer_count = len(primary.layers) if primary is not None else len(info.layers)
    svc = primary is not None and primary.mime_type.lower() in SVC_MIME_TYPES
    info.simulcast = kind == "video" and layer_count > 1 and not svc
    return info


def _layers(requested: Iterable[models.VideoLayer]) -> list[models.VideoLayer]:
    """The client's layers with the spatial index and rid LiveKit derives from each quality
    (``videolayerutils.go``: LOW q 0, MEDIUM h 1, HIGH f 2)."""
    layers = []
    for layer in requested:
        copied = models.VideoLayer()
        copied.CopyFrom(layer)
        if layer.quality in _RID_BY_QUALITY:
            copied.spatial_layer = int(layer.quality)
            copied.rid = copied.rid or _RID_BY_QUALITY[layer.quality]
        layers.append(copied)
    return layers


def source_name(source: models.TrackSource) -> str:
    return _NAMES_BY_SOURCE.get(source, "unknown")
