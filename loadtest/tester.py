"""One load-test participant: LiveKit signalling (``/rtc``, protocol 15, binary protobuf)
and the negotiation of its two peer connections.

Join: open the WebSocket, read the JoinResponse, answer the server's subscriber offers (and
every renegotiation), trickle our candidate. Publish: AddTrackRequest per track, wait for each
TrackPublishedResponse, offer the publisher transport, apply the answer, and hand the streams
to the process's pacer once it connects. Ping every ``ping_interval``; leave at the end.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from loadtest import sdp_client
from loadtest.dtls import local_fingerprints
from loadtest.media import Clip
from loadtest.pacer import MediaSource, Pacer
from loadtest.packetizer import (
    OpusPacketizer,
    RtpWriter,
    Vp8Packetizer,
    extension_block,
    split_frames,
)
from loadtest.params import LAYOUTS, Params, TesterSpec
from loadtest.peer import ClientPeer
from loadtest.stats import TesterResult, TrackResult
from protocol import sdp
from protocol.token import VideoGrant, issue_token
from sfu.tasks import cancel_and_wait

PROTOCOL_VERSION = 15
SDK_VERSION = "0.1.0"
_QUALITIES = {
    1: (models.VideoQuality.HIGH,),
    2: (models.VideoQuality.LOW, models.VideoQuality.MEDIUM),
    3: (models.VideoQuality.LOW, models.VideoQuality.MEDIUM, models.VideoQuality.HIGH),
}


class JoinError(Exception):
    """A participant could not join; the message says at which step."""


@dataclass
class MediaBank:
    """The process's clips, split into payload chunks once per packet room."""

    audio: Clip | None
    video: dict[str, Clip]
    """rid -> clip of that simulcast layer."""
    _chunks: dict[tuple[int, int], list[list[bytes]]] = field(default_factory=dict)

    def chunks(self, clip: Clip, room: int) -> list[list[bytes]]:
        key = (id(clip), room)
        if key not in self._chunks:
            self._chunks[key] = split_frames(clip.frames, room)
        return self._chunks[key]


@dataclass
class ProcessContext:
    """What every tester of a process shares."""

    params: Params
    session: aiohttp.ClientSession
    pacer: Pacer
    media: MediaBank
    bind_address: str
    advertised_address: str


def ws_base(url: str) -> str:
    """``ws(s)://host[:port]`` from any of the URL forms ``lk`` accepts."""
    parts = urllib.parse.urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def join_token(params: Params, spec: TesterSpec) -> str:
    grant = VideoGrant(room_join=True, room=params.room, can_publish=spec.publishes)
    ttl = max(3600.0, params.duration + 3600.0)
    return issue_token(
        api_key=params.api_key,
        secret=params.api_secret,
        identity=spec.identity,
        video=grant,
        ttl_s=ttl,
    )


def _signal(**message: object) -> bytes:
    return rtc.SignalRequest(**message).SerializeToString()  # type: ignore[arg-type]


class Tester:
    """One participant of the plan, from join to leave."""

    def __init__(self, spec: TesterSpec, ctx: ProcessContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.result = TesterResult(spec.identity, spec.publishes, spec.subscribe)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.subscriber: ClientPeer | None = None
        self.publisher: ClientPeer | None = None
        self.join: rtc.JoinResponse | None = None
        loop = asyncio.get_running_loop()
        self._joined: asyncio.Future[rtc.JoinResponse] = loop.create_future()
        self._answer: asyncio.Future[rtc.SessionDescription] = loop.create_future()
        self._published: dict[str, asyncio.Future[models.TrackInfo]] = {}
        self._subscriber_ready: asyncio.Future[ClientPeer] = loop.create_future()
        self._candidates: dict[int, list[tuple[str, int]]] = {0: [], 1: []}
        self._video_tiles: dict[str, int] = {}
        self._publication_at_join = False
        self._reader: asyncio.Task[None] | None = None
        self._last_ping = 0.0
        self._rtt = 0
        self._started = 0.0
        self._leaving = False
        self.settled = False
        """The join attempt is over, successful or not."""
        self._video_sources: dict[str, MediaSource] = {}

    # --- join ----------------------------------------------------------------------------

    async def run_join(self) -> None:
        """Join, publish when asked, wait until connected; raises JoinError."""
        params = self.ctx.params
        self._started = time.monotonic()
        try:
            async with asyncio.timeout(params.join_timeout):
                await self._connect_signal()
                join = await self._joined
                self._publication_at_join = any(p.tracks for p in join.other_participants)
                if self.spec.publishes:
                    await self._publish()
                subscriber = await self._subscriber_ready
                await subscriber.connected
        except TimeoutError:
            raise JoinError(f"join timed out after {params.join_timeout:g} s") from None
        except ConnectionError as exc:
            raise JoinError(str(exc)) from None
        self.result.connect_ms = 1000 * (time.monotonic() - self._started)
        self.result.joined = True

    async def _connect_signal(self) -> None:
        params = self.ctx.params
        query = urllib.parse.urlencode(
            {
                "access_token": join_token(params, self.spec),
                "protocol": PROTOCOL_VERSION,
                "sdk": "python",
                "version": SDK_VERSION,
                "auto_subscribe": "1" if self.spec.subscribe else "0",
            }
        )
        url = f"{ws_base(params.url)}/rtc?{query}"
        try:
            self.ws = await self.ctx.session.ws_connect(url, max_msg_size=16 << 20)
        except aiohttp.WSServerHandshakeError as exc:
            raise JoinError(f"WebSocket refused: HTTP {exc.status} {exc.message}") from None
        except aiohttp.ClientError as exc:
            raise JoinError(f"cannot connect: {exc}") from None
        self._reader = asyncio.get_running_loop().create_task(
            self._read(self.ws), name=f"signal-{self.spec.identity}"
        )

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.BINARY:
                continue
            response = rtc.SignalResponse()
            try:
                response.ParseFromString(message.data)
                await self._handle(response)
            except (DecodeError, ValueError, ConnectionError, OSError) as exc:
                self._fail(f"signal handling failed: {exc}")
        if not self._leaving:
            self._fail("the server closed the signal connection")

    def _fail(self, error: str) -> None:
        if not self.result.error:
            self.result.error = error
        futures: list[asyncio.Future[Any]] = [self._joined, self._answer, self._subscriber_ready]
        futures += [peer.connected for peer in self.peers()]
        for future in futures + list(self._published.values()):
            if not future.done():
                future.set_exception(ConnectionError(error))
                future.exception()  # retrieved: nobody may be waiting for this one

    async def _handle(self, response: rtc.SignalResponse) -> None:
        match response.WhichOneof("message"):
            case "join":
                self.join = response.join
                if not self._joined.done():
                    self._joined.set_result(response.join)
            case "offer":
                await self._on_offer(response.offer)
            case "answer":
                if not self._answer.done():
                    self._answer.set_result(response.answer)
            case "trickle":
                self._on_trickle(response.trickle)
            case "track_published":
                waiting = self._published.get(response.track_published.cid)
                if waiting is not None and not waiting.done():
                    waiting.set_result(response.track_published.track)
            case "subscribed_quality_update":
                self._on_quality_update(response.subscribed_quality_update)
            case "pong_resp":
                self._rtt = int(time.time() * 1000) - response.pong_resp.last_ping_timestamp
            case "leave":
                if not self._leaving:  # one crossing our own leave is no failure
                    self._fail(f"the server asked us to leave (reason {response.leave.reason})")
            case _:
                pass

    # --- subscriber transport ------------------------------------------------------------

    async def _on_offer(self, offer: rtc.SessionDescription) -> None:
        remote = sdp_client.parse_remote(offer.sdp)
        peer = self.subscriber
        if peer is None:
            # The answerer is controlled against a full-ICE server (ICE-lite flips it).
            peer = ClientPeer("subscriber", controlling=False, sample_every=self._sample())
            await peer.open(self.ctx.bind_address)
            self.subscriber = peer
        setup = "passive" if remote.setup == "active" else "active"
        answer = sdp_client.subscriber_answer(
            remote, self._transport_params(peer, setup), session_id=secrets.randbits(62)
        )
        message = rtc.SessionDescription(type="answer", sdp=answer, id=offer.id)
        await self._send(_signal(answer=message))
        await self._trickle(peer, answer, rtc.SignalTarget.SUBSCRIBER)
        peer.start(remote, dtls_client=setup == "active")
        for address in self._candidates[rtc.SignalTarget.SUBSCRIBER]:
            peer.add_candidate(address)
        if not self._subscriber_ready.done():
            self._subscriber_ready.set_result(peer)
        await self._apply_layout(remote.tracks)

    def _sample(self) -> int:
        return self.ctx.params.sample_every()

    def _transport_params(self, peer: ClientPeer, setup: str) -> sdp.TransportParams:
        candidate = sdp_client.host_candidate(self.ctx.advertised_address, peer.local_port)
        return sdp.TransportParams(
            ice_ufrag=peer.ice.local_ufrag,
            ice_pwd=peer.ice.local_pwd,
            fingerprints=local_fingerprints(),
            candidates=(candidate,),
            setup=setup,
        )

    async def _trickle(self, peer: ClientPeer, description: str, target: int) -> None:
        tag = sdp.bundle_tag(sdp.parse(description)) or ("0", 0)
        candidate = sdp_client.host_candidate(self.ctx.advertised_address, peer.local_port)
        init = json.dumps({"candidate": candidate, "sdpMid": tag[0], "sdpMLineIndex": tag[1]})
        trickle = rtc.TrickleRequest(candidateInit=init, target=target)  # type: ignore[arg-type]
        await self._send(_signal(trickle=trickle))

    def _on_trickle(self, trickle: rtc.TrickleRequest) -> None:
        try:
            init = json.loads(trickle.candidateInit)
        except ValueError:
            return
        found = sdp_client.parse_candidate(str(init.get("candidate") or ""))
        if found is None:
            return
        address = (found[0], found[1])
        peer = self.subscriber if trickle.target == rtc.SignalTarget.SUBSCRIBER else self.publisher
        self._candidates[int(trickle.target)].append(address)
        if peer is not None:
            peer.add_candidate(address)

    async def _apply_layout(self, tracks: tuple[sdp_client.RemoteTrack, ...]) -> None:
        """Video tiles as ``lk load-test`` lays them out: the first tracks get a tile's size,
        the rest are disabled (UpdateTrackSettings)."""
        tiles = LAYOUTS[self.ctx.params.layout]
        for track in tracks:
            if track.kind != "video" or track.track_sid in self._video_tiles:
                continue
            index = len(self._video_tiles)
            self._video_tiles[track.track_sid] = index
            if index < len(tiles):
                width, height = tiles[index]
                settings = rtc.UpdateTrackSettings(
                    track_sids=[track.track_sid], width=width, height=height
                )
            else:
                settings = rtc.UpdateTrackSettings(track_sids=[track.track_sid], disabled=True)
            await self._send(_signal(track_setting=settings))

    # --- publisher transport -------------------------------------------------------------

    async def _publish(self) -> None:
        streams, requests = self._publication()
        for request in requests:
            self._published[request.cid] = asyncio.get_running_loop().create_future()
            await self._send(_signal(add_track=request))
        infos = [await self._published[request.cid] for request in requests]
        peer = ClientPeer("publisher", controlling=True, sample_every=self._sample())
        await peer.open(self.ctx.bind_address)
        self.publisher = peer
        offer = sdp_client.publisher_offer(
            streams, self._transport_params(peer, "actpass"), session_id=secrets.randbits(62)
        )
        await self._send(_signal(offer=rtc.SessionDescription(type="offer", sdp=offer, id=1)))
        await self._trickle(peer, offer, rtc.SignalTarget.PUBLISHER)
        answer = sdp_client.parse_remote((await self._answer).sdp)
        peer.start(answer, dtls_client=answer.setup != "active")
        for address in self._candidates[rtc.SignalTarget.PUBLISHER]:
            peer.add_candidate(address)
        await peer.connected
        self._attach_sources(peer, streams, infos)

    def _publication(self) -> tuple[list[sdp_client.OfferedStream], list[rtc.AddTrackRequest]]:
        streams: list[sdp_client.OfferedStream] = []
        requests: list[rtc.AddTrackRequest] = []
        if self.spec.audio:
            cid = f"TR_A{secrets.token_hex(6)}"
            audio = rtc.AddTrackRequest(
                cid=cid,
                name="audio",
                type=models.TrackType.AUDIO,
                source=models.TrackSource.MICROPHONE,
            )
            requests.append(audio)
            ssrc = secrets.randbelow(0xFFFFFFF0) + 1
            streams.append(sdp_client.OfferedStream("audio", str(len(streams)), cid, ssrc=ssrc))
        if self.spec.video:
            cid = f"TR_V{secrets.token_hex(6)}"
            requests.append(self._video_request(cid))
            layers = self.ctx.params.layers
            mid = str(len(streams))
            if len(layers) > 1:
                rids = tuple(rid for rid, *_ in layers)
                streams.append(sdp_client.OfferedStream("video", mid, cid, rids=rids))
            else:
                ssrc = secrets.randbelow(0xFFFFFFF0) + 1
                streams.append(sdp_client.OfferedStream("video", mid, cid, ssrc=ssrc))
        return streams, requests

    def _video_request(self, cid: str) -> rtc.AddTrackRequest:
        layers = self.ctx.params.layers
        qualities = _QUALITIES[len(layers)]
        simulcast = len(layers) > 1
        video_layers = [
            models.VideoLayer(
                quality=quality, width=w, height=h, bitrate=b, rid=rid if simulcast else ""
            )
            for quality, (rid, w, h, b) in zip(qualities, layers, strict=True)
        ]
        _, width, height, _ = layers[-1]
        return rtc.AddTrackRequest(
            cid=cid,
            name="video",
            type=models.TrackType.VIDEO,
            source=models.TrackSource.CAMERA,
            width=width,
            height=height,
            layers=video_layers,
            simulcast_codecs=[rtc.SimulcastCodec(codec="vp8", cid=cid)],
        )

    def _attach_sources(
        self,
        peer: ClientPeer,
        streams: list[sdp_client.OfferedStream],
        infos: list[models.TrackInfo],
    ) -> None:
        loop = asyncio.get_running_loop()
        media = self.ctx.media
        for stream, info in zip(streams, infos, strict=True):
            start = loop.time() + secrets.randbelow(20_000) / 1e6
            if stream.kind == "audio" and media.audio is not None:
                self._add_source(peer, media.audio, stream, "", stream.ssrc, start)
                continue
            layers = list(stream.rids) if stream.rids else [""]
            for rid in reversed(layers):  # highest first: it leads each frame
                clip = media.video[rid or self.ctx.params.layers[-1][0]]
                ssrc = stream.ssrc or secrets.randbelow(0xFFFFFFF0) + 1
                source = self._add_source(peer, clip, stream, rid, ssrc, start)
                self._video_sources[f"{info.sid}/{rid}"] = source

    def _add_source(
        self,
        peer: ClientPeer,
        clip: Clip,
        stream: sdp_client.OfferedStream,
        rid: str,
        ssrc: int,
        start: float,
    ) -> MediaSource:
        audio = stream.kind == "audio"
        payload_type = sdp_client.OPUS_PT if audio else sdp_client.VP8_PT
        writer = RtpWriter(
            ssrc, payload_type, extension_block(stream.mid, rid), secrets.randbits(16)
        )
        packetizer: OpusPacketizer | Vp8Packetizer = (
            OpusPacketizer(writer) if audio else Vp8Packetizer(writer, secrets.randbits(15))
        )
        chunks = self.ctx.media.chunks(clip, packetizer.room)
        sink: Callable[[bytes], None] = peer.send_rtp
        source = MediaSource(
            clip, chunks, packetizer, start=start, ts0=secrets.randbits(32), sink=sink
        )
        peer.sources[ssrc] = source
        self.ctx.pacer.add(source)
        return source

    def _on_quality_update(self, update: rtc.SubscribedQualityUpdate) -> None:
        """Dynacast (LiveKit): layers nobody receives are paused, as clients pause them."""
        layers = self.ctx.params.layers
        if len(layers) < 2:
            return
        rid_of = dict(zip(_QUALITIES[len(layers)], (rid for rid, *_ in layers), strict=True))
        qualities = list(update.subscribed_qualities)
        for codec in update.subscribed_codecs:
            qualities += list(codec.qualities)
        for quality in qualities:
            source = self._video_sources.get(f"{update.track_sid}/{rid_of.get(quality.quality)}")
            if source is not None:
                source.paused = not quality.enabled

    # --- while running -------------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        if self.ws is None or self.ws.closed:
            raise ConnectionError("signal connection closed")
        await self.ws.send_bytes(data)

    async def ping(self, now: float) -> None:
        """``ping_req`` every ``ping_interval`` seconds of the JoinResponse."""
        if self.join is None or now - self._last_ping < max(1, self.join.ping_interval):
            return
        self._last_ping = now
        ping = rtc.Ping(timestamp=int(time.time() * 1000), rtt=max(0, self._rtt))
        try:
            await self._send(_signal(ping_req=ping))
        except (ConnectionError, OSError):
            self._fail("signal connection lost")

    def peers(self) -> list[ClientPeer]:
        return [peer for peer in (self.publisher, self.subscriber) if peer is not None]

    def collect(self) -> TesterResult:
        """The participant's counters as a result (after the run)."""
        result = self.result
        if self.spec.subscribe:
            result.expected_tracks = self.ctx.params.tracks_per_subscriber
            result.expected_media_tracks = self.ctx.params.media_tracks_per_subscriber
        peer = self.subscriber
        if peer is None:
            return result
        tiles = len(LAYOUTS[self.ctx.params.layout])
        for track in peer.track_of_ssrc.values():
            enabled = self._video_tiles.get(track.track_sid, 0) < tiles
            result.tracks.setdefault(track.track_sid, TrackResult(track.kind, enabled=enabled))
        for ssrc, stream in peer.streams.items():
            key = stream.track_sid or f"ssrc:{ssrc}"
            track_result = result.tracks.setdefault(key, TrackResult(stream.kind))
            track_result.packets += stream.packets
            track_result.octets += stream.octets
            track_result.lost += stream.lost
            track_result.srtp_checked += stream.srtp_ok + stream.srtp_errors
            track_result.srtp_errors += stream.srtp_errors
        if peer.first_media is not None and self._publication_at_join:
            result.first_media_ms = 1000 * (peer.first_media - self._started)
        return result

    async def leave(self) -> None:
        """LeaveRequest, then close the WebSocket and both transports."""
        self._leaving = True
        if self.ws is not None and not self.ws.closed:
            leave = rtc.LeaveRequest(reason=models.DisconnectReason.CLIENT_INITIATED)
            try:
                await self.ws.send_bytes(_signal(leave=leave))
                await self.ws.close()
            except (ConnectionError, OSError):
                pass
        if self._reader is not None:
            await cancel_and_wait(self._reader)
        for peer in self.peers():
            await peer.close()
