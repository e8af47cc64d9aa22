"""``ForwardParticipant`` to a room on another node: the two ends of one forward.

- On the source node, a :class:`RemoteLink` is the source room's :class:`ForwardLink`: it
  taps each published track's receivers (every packet, every layer, goes to the other node
  through ``sfu/media_relay.py``), and tells the destination node of each change over the
  control channel (the cluster's node-to-node calls, ``signaling/forward_cluster.py``). It
  answers the destination's keyframe requests and NACKs, and counts the layers the
  destination wants in the publisher's dynacast.
- On the destination node, a :class:`RemoteCopy` is the destination room's
  :class:`ForwardCopy`: a copy of each track (receiver, simulcast layers or SVC) fed from
  the relay, so subscribers there get downtracks as on any local track.

Everything here is synchronous; the control channel queues its messages in order.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from livekit.protocol import models, rtc

from protocol import rtcp
from protocol.ids import PARTICIPANT_PREFIX, new_id
from protocol.sdp_media import Codec
from sfu.counters import NODE_COUNTERS, MediaCounters
from sfu.forwarding import forwarded_info
from sfu.media_relay import (
    FEEDBACK,
    MEDIA,
    SENDER_REPORT,
    MediaRelay,
    header,
    read_sender_report,
    sender_report_body,
)
from sfu.participant import Participant
from sfu.participant_api import permission_allows
from sfu.receiver import PublishedTrack, TrackReceiver
from sfu.simulcast_track import SimulcastTrack
from sfu.svc import SvcTrack

if TYPE_CHECKING:
    from sfu.room import Room

logger = logging.getLogger(__name__)

Json = dict[str, Any]
M = TypeVar("M", models.TrackInfo, models.ParticipantInfo, rtc.SubscriptionPermission)


class ControlChannel(Protocol):
    """Messages to the node at the other end of a forward, delivered in order."""

    def send(self, method: str, body: Json) -> None: ...

    def close(self) -> None:
        """Nothing more will be sent: the channel ends once what is queued is delivered."""


def encode_message(message: Any) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


def decode_message(cls: type[M], text: object) -> M:
    """Raises ValueError for anything that is not base64 of a ``cls`` message."""
    if not isinstance(text, str):
        raise ValueError("expected a base64 string")
    message = cls()
    try:
        message.ParseFromString(base64.b64decode(text, validate=True))
    except Exception as exc:  # binascii.Error, DecodeError
        raise ValueError(f"unreadable {cls.__name__}: {exc}") from None
    return message


@dataclass(frozen=True)
class TrackOffer:
    """What the destination needs to rebuild a track: its info, codecs and layering."""

    index: int
    info: models.TrackInfo
    codec: Codec
    red: Codec | None = None
    rids: tuple[str, ...] = ()
    """The publisher's simulcast rids (empty: no rid simulcast)."""
    svc: bool = False

    def to_json(self) -> Json:
        return {
            "index": self.index,
            "info": encode_message(self.info),
            "codec": _codec_json(self.codec),
            "red": _codec_json(self.red) if self.red is not None else None,
            "rids": list(self.rids),
            "svc": self.svc,
        }

    @classmethod
    def from_json(cls, obj: object) -> TrackOffer:
        """Raises ValueError for anything malformed."""
        if not isinstance(obj, dict):
            raise ValueError("a track offer must be an object")
        index, rids = obj.get("index"), obj.get("rids", [])
        if not isinstance(index, int) or not 0 <= index <= 0xFFFF:
            raise ValueError("bad track index")
        if not isinstance(rids, list) or not all(isinstance(r, str) for r in rids):
            raise ValueError("bad rids")
        red = obj.get("red")
        return cls(
            index=index,
            info=decode_message(models.TrackInfo, obj.get("info")),
            codec=_codec_from_json(obj.get("codec")),
            red=_codec_from_json(red) if red is not None else None,
            rids=tuple(rids),
            svc=obj.get("svc") is True,
        )


def _codec_json(codec: Codec) -> Json:
    return dataclasses.asdict(codec)


def _codec_from_json(obj: object) -> Codec:
    if not isinstance(obj, dict):
        raise ValueError("a codec must be an object")
    try:
        return Codec(
            payload_type=int(obj["payload_type"]) & 0x7F,
            mime=str(obj["mime"]),
            clock_rate=int(obj["clock_rate"]),
            channels=int(obj.get("channels", 0)),
            fmtp=str(obj.get("fmtp", "")),
            rtcp_fb=tuple(str(f) for f in obj.get("rtcp_fb", ())),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"bad codec: {exc}") from None


def offer_of(index: int, track: PublishedTrack) -> TrackOffer:
    receiver = track.receiver
    assert receiver is not None
    rids = tuple(track.simulcast.spatial_by_rid) if track.simulcast is not None else ()
    return TrackOffer(index, track.info, receiver.codec, receiver.red, rids, track.svc is not None)


# --- the source node ---------------------------------------------------------------------


class TapTarget:
    """One forward of a track to another node: where its datagrams go, and their headers by
    spatial layer (made once per layer, not per packet)."""

    __slots__ = ("headers", "index", "peer", "relay", "session")

    def __init__(
        self, relay: MediaRelay, peer: tuple[str, int], session: bytes, index: int
    ) -> None:
        self.relay = relay
        self.peer = peer
        self.session = session
        self.index = index
        self.headers: dict[int, bytes] = {}

    def media_header(self, spatial: int) -> bytes:
        made = self.headers.get(spatial)
        if made is None:
            made = self.headers[spatial] = header(MEDIA, self.session, self.index, spatial)
        return made


class TrackTaps:
    """A track's :class:`RelayTap`: each forward of it to another node gets every packet."""

    def __init__(self) -> None:
        self.targets: dict[bytes, TapTarget] = {}
        """session -> where that forward's datagrams go."""

    def media(self, packet: bytes, spatial: int) -> None:
        for target in self.targets.values():
            target.relay.send(target.media_header(spatial) + packet, target.peer)

    def sender_report(self, spatial: int, ntp: int, rtp_timestamp: int) -> None:
        body = sender_report_body(ntp, rtp_timestamp)
        for t in self.targets.values():
            t.relay.send(header(SENDER_REPORT, t.session, t.index, spatial) + body, t.peer)


class RemoteLink:
    """The source's end: ``participant`` of ``source_room`` forwarded to room ``destination``
    on another node, relayed to that node's relay at ``peer`` once it has answered."""

    def __init__(
        self,
        session: bytes,
        participant: Participant,
        source_room: Room,
        destination: str,
        relay: MediaRelay,
        control: ControlChannel,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.participant = participant
        self.source_room = source_room
        self.destination = destination
        self._relay = relay
        self.control = control
        self._clock = clock
        self.peer: tuple[str, int] | None = None
        self.ended = False
        self._tracks: dict[int, PublishedTrack] = {}
        self._index_by_sid: dict[str, int] = {}
        self._next_index = 0
        self._key = session.hex()

    def open_body(self, room: str, source_node: str) -> Json:
        """The ``Open`` call's body; the tracks published now are taken into the forward."""
        offers = [
            self._take(track).to_json() for track in self.participant.tracks.published.values()
        ]
        return {
            "session": self._key,
            "room": room,
            "source_node": source_node,
            "relay": list(self._relay.address),
            "tracks": offers,
            **self._info_body(self.participant),
        }

    def start(self, peer: tuple[str, int]) -> None:
        """The destination took the forward: media flows to ``peer`` from now on."""
        self.peer = peer
        self._relay.sessions[self.session] = self
        for index, track in self._tracks.items():
            self._tap(index, track)

    # --- ForwardLink ----------------------------------------------------------------------

    def changed(self, participant: Participant) -> None:
        self.control.send("Update", {"session": self._key, **self._info_body(participant)})

    def permission_changed(self, participant: Participant) -> None:
        body = {"session": self._key, "permission_changed": True}
        self.control.send("Update", body | self._info_body(participant))

    def track_published(self, participant: Participant, track: PublishedTrack) -> None:
        if track.sid in self._index_by_sid or track.receiver is None:
            return
        offer = self._take(track)
        if self.peer is not None:
            self._tap(offer.index, track)
        self.control.send("Publish", {"session": self._key, "track": offer.to_json()})

    def track_unpublished(self, participant: Participant, track: PublishedTrack) -> None:
        index = self._index_by_sid.pop(track.sid, None)
        if index is None:
            return
        self._untap(self._tracks.pop(index))
        self.control.send("Unpublish", {"session": self._key, "sid": track.sid})

    def stop(self) -> None:
        """The source is gone or its room closed: the destination is told."""
        if self.end():
            self.control.send("Stop", {"session": self._key})
            self.control.close()

    def end(self) -> bool:
        """Stop relaying (without telling the other node); False when already ended."""
        if self.ended:
            return False
        self.ended = True
        self._relay.sessions.pop(self.session, None)
        for track in self._tracks.values():
            self._untap(track)
        self._tracks.clear()
        self._index_by_sid.clear()
        return True

    # --- from the destination ---------------------------------------------------------------

    def on_relay(self, kind: int, index: int, spatial: int, body: bytes, now: float) -> None:
        track = self._tracks.get(index)
        if kind != FEEDBACK or track is None or self.peer is None:
            return
        receiver = _layer_receiver(track, spatial)
        if receiver is None:
            return
        if next(rtcp.keyframe_requests(body), None) is not None:
            receiver.request_keyframe(now)
        resend = header(MEDIA, self.session, index, spatial)
        for _, sequence in rtcp.nacked_sequences(body):
            packet = receiver.cache.get(sequence)
            if packet is not None:
                self._relay.send(resend + packet, self.peer)

    def want_layers(self, track_sid: str, top: int) -> None:
        """The destination's subscribers want layers up to ``top`` (-1: none) of a track."""
        index = self._index_by_sid.get(track_sid)
        if index is not None:
            self._wish(self._tracks[index], top)

    # --- helpers ---------------------------------------------------------------------------

    def _info_body(self, participant: Participant) -> Json:
        permission = participant.subscription_permission
        return {
            "info": encode_message(participant.to_info()),
            "permission": encode_message(permission) if permission is not None else None,
        }

    def _take(self, track: PublishedTrack) -> TrackOffer:
        index = self._next_index
        self._next_index = (self._next_index + 1) & 0xFFFF
        self._tracks[index] = track
        self._index_by_sid[track.sid] = index
        return offer_of(index, track)

    def _tap(self, index: int, track: PublishedTrack) -> None:
        assert self.peer is not None and track.receiver is not None
        taps = track.receiver.relay
        if not isinstance(taps, TrackTaps):
            taps = TrackTaps()
        taps.targets[self.session] = TapTarget(self._relay, self.peer, self.session, index)
        for receiver in track.receivers():
            receiver.relay = taps
        if track.layered is not None:
            # Every layer until the destination says what its subscribers want.
            self._wish(track, track.layered.dynacast.top_layer)

    def _untap(self, track: PublishedTrack) -> None:
        taps = track.receiver.relay if track.receiver is not None else None
        if isinstance(taps, TrackTaps):
            taps.targets.pop(self.session, None)
            if not taps.targets:
                for receiver in track.receivers():
                    receiver.relay = None
        self._wish(track, None)

    def _wish(self, track: PublishedTrack, top: int | None) -> None:
        """The destination's wish for ``track``'s layers, in its publisher's dynacast (None:
        the forward no longer wishes anything)."""
        layered = track.layered
        if layered is None:
            return
        if top is None:
            layered.dynacast.remote.pop(self._key, None)
        else:
            layered.dynacast.remote[self._key] = top
        layered.update_dynacast(self._clock())


def _layer_receiver(track: PublishedTrack, spatial: int) -> TrackReceiver | None:
    if track.simulcast is not None:
        return track.simulcast.receivers.get(spatial)
    return track.receiver


# --- the destination node ------------------------------------------------------------------


class RemoteCopy:
    """The destination's end: the copy of a participant of a room on another node.

    :param on_ended: told when the destination room drops the copy (the source is told).
    """

    def __init__(
        self,
        session: bytes,
        info: models.ParticipantInfo,
        relay: MediaRelay,
        peer: tuple[str, int],
        control: ControlChannel,
        dynacast_delay: float,
        counters: MediaCounters = NODE_COUNTERS,
    ) -> None:
        self.session = session
        self.sid = new_id(PARTICIPANT_PREFIX)
        self.joined_at_ms = int(time.time() * 1000)
        self._info = info
        self._permission: rtc.SubscriptionPermission | None = None
        self._relay = relay
        self._peer = peer
        self.control = control
        self._dynacast_delay = dynacast_delay
        self._counters = counters
        self.published: dict[str, PublishedTrack] = {}
        self._by_index: dict[int, PublishedTrack] = {}
        self._index_by_sid: dict[str, int] = {}
        self.ended_here = False
        self.quiet = False
        """The source node is gone: nothing is sent to it any more."""

    # --- ForwardCopy ----------------------------------------------------------------------

    @property
    def identity(self) -> str:
        return self._info.identity

    @property
    def hidden(self) -> bool:
        return self._info.permission.hidden

    def allows(self, subscriber: Participant, track_sid: str) -> bool:
        return permission_allows(self._permission, subscriber, track_sid)

    def to_info(self, *, gone: bool = False) -> models.ParticipantInfo:
        info = models.ParticipantInfo()
        info.CopyFrom(self._info)
        return forwarded_info(info, self.sid, self.joined_at_ms, gone=gone)

    def ended(self) -> None:
        if self.ended_here:
            return
        self.ended_here = True
        self._relay.sessions.pop(self.session, None)
        for track in self.published.values():
            for receiver in track.receivers():
                self._counters.retire_receiver(receiver)
        if not self.quiet:
            self.control.send("Stopped", {"session": self.session.hex()})
        self.control.close()

    # --- from the source node ---------------------------------------------------------------

    def update(
        self, info: models.ParticipantInfo, permission: rtc.SubscriptionPermission | None
    ) -> None:
        self._info = info
        self._permission = permission

    def add_track(self, offer: TrackOffer) -> PublishedTrack | None:
        """The copy of a track just published at the source; None for a known one."""
        if offer.index in self._by_index or offer.info.sid in self.published:
            return None
        receiver = TrackReceiver(offer.codec, 0, self._feedback(offer.index, 0), red=offer.red)
        track = PublishedTrack(info=offer.info, receiver=receiver)
        if offer.rids:
            track.simulcast = SimulcastTrack(offer.rids, offer.info, self._dynacast_delay)
            receiver.simulcast = track.simulcast
        elif offer.svc:
            track.svc = SvcTrack(offer.info, self._dynacast_delay)
            receiver.svc = track.svc
        layered = track.layered
        if layered is not None:
            sid = offer.info.sid
            layered.dynacast.on_top = lambda top: self._want_layers(sid, top)
        self._counters.add_receiver(receiver)
        self.published[offer.info.sid] = track
        self._by_index[offer.index] = track
        self._index_by_sid[offer.info.sid] = offer.index
        return track

    def remove_track(self, sid: str) -> PublishedTrack | None:
        track = self.published.pop(sid, None)
        if track is not None:
            self._by_index.pop(self._index_by_sid.pop(sid), None)
            for receiver in track.receivers():
                self._counters.retire_receiver(receiver)
        return track

    def on_relay(self, kind: int, index: int, spatial: int, body: bytes, now: float) -> None:
        track = self._by_index.get(index)
        if track is None:
            return
        receiver = self._receiver_for(track, index, spatial)
        if receiver is None:
            return
        if kind == MEDIA:
            if len(body) >= 12 and body[0] >> 6 == 2:
                receiver.on_packet(body, now)
        elif kind == SENDER_REPORT:
            report = read_sender_report(body)
            if report is not None:
                receiver.on_sender_report(report[0], report[1], now)

    def tick(self, now: float) -> None:
        """Once a second, as a publisher's tracks are ticked: layer activity, dynacast and
        the receivers' own NACK retries (no REMB: the source's publisher has its own)."""
        for track in self.published.values():
            if track.simulcast is not None:
                track.simulcast.tick(now, remb=False)
            elif track.receiver is not None:
                track.receiver.tick(now, remb=False)
            if track.svc is not None:
                track.svc.tick(now)

    # --- helpers ---------------------------------------------------------------------------

    def _receiver_for(
        self, track: PublishedTrack, index: int, spatial: int
    ) -> TrackReceiver | None:
        simulcast = track.simulcast
        if simulcast is None:
            return track.receiver
        layer = simulcast.receivers.get(spatial)
        if layer is not None or not 0 <= spatial < simulcast.layer_count:
            return layer
        primary = track.receiver
        assert primary is not None
        if primary in simulcast.receivers.values():
            layer = TrackReceiver(primary.codec, 0, self._feedback(index, spatial), red=primary.red)
            self._counters.add_receiver(layer)
        else:
            layer = primary
            layer.send_rtcp = self._feedback(index, spatial)
        simulcast.add_layer(spatial, layer)
        return layer

    def _feedback(self, index: int, spatial: int) -> Callable[[bytes], None]:
        prefix = header(FEEDBACK, self.session, index, spatial)

        def send(packet: bytes) -> None:
            if not self.ended_here:
                self._relay.send(prefix + packet, self._peer)

        return send

    def _want_layers(self, sid: str, top: int) -> None:
        if not self.ended_here:
            self.control.send("Layers", {"session": self.session.hex(), "sid": sid, "top": top})
