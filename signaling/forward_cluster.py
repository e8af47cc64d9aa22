"""``ForwardParticipant`` between nodes: the control channel and the glue to the rooms.

The node hosting the source room (where the API call lands) opens the forward with an
``Open`` call to the node hosting the destination room, over the router's node-to-node calls
(Redis). That node makes the copy (``sfu/remote_forward.py``) and answers with its relay
address; media then flows over UDP (``sfu/media_relay.py``). Later changes travel as calls
too, in order, one queue per forward: ``Update`` (info and subscription permission),
``Publish``, ``Unpublish`` and ``Stop`` from the source; ``Layers`` (the layers the
destination's subscribers want, for the publisher's dynacast) and ``Stopped`` (the copy was
removed, or its room closed) from the destination.

A forward whose other node stops answering, or is no longer alive in the cluster, ends on
this side: the copy leaves its room, or the source stops relaying.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable

from livekit.protocol import models, rtc

from routing.router import Router, RoutingError, RpcRequest, RpcResponse
from routing.store import STORE_ERRORS
from sfu.forwarding import ForwardError
from sfu.media_relay import SESSION_BYTES, MediaRelay
from sfu.participant import Participant
from sfu.remote_forward import Json, RemoteCopy, RemoteLink, TrackOffer, decode_message
from sfu.room import Room
from sfu.rooms import RoomManager
from signaling.twirp import TwirpError, error_from_json

logger = logging.getLogger(__name__)

#: The router service name of these calls.
SERVICE = "forwards"
CALL_TIMEOUT_S = 5.0
TICK_S = 1.0
#: Every this many ticks, forwards whose other node is no longer alive end.
LIVENESS_TICKS = 5
_CALL_ERRORS: tuple[type[Exception], ...] = (RoutingError, *STORE_ERRORS)
_UNKNOWN = RpcResponse(404, b'{"code":"not_found","msg":"no such forward"}')
_DONE = RpcResponse(200, b"{}")


class NodeControl:
    """A forward's :class:`ControlChannel` to one node: calls delivered one at a time, in
    order, once :meth:`release` d. A call the other node refuses as unknown, or does not
    answer, ends the forward on this side (``on_lost``)."""

    def __init__(
        self,
        router: Router,
        node_id: str,
        on_lost: Callable[[], None],
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self._router = router
        self.node_id = node_id
        self._on_lost = on_lost
        self._queue: asyncio.Queue[tuple[str, Json] | None] = asyncio.Queue()
        self._released = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._run(), name="forward-control")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def send(self, method: str, body: Json) -> None:
        self._queue.put_nowait((method, body))

    def close(self) -> None:
        self._queue.put_nowait(None)
        self._released.set()

    def release(self) -> None:
        self._released.set()

    async def call(self, method: str, body: Json) -> RpcResponse:
        """One call now, outside the queue (``Open``); raises RoutingError."""
        request = RpcRequest(
            reply_to=self._router.reply_channel(),
            service=SERVICE,
            method=method,
            authorization="",
            body=json.dumps(body).encode(),
        )
        try:
            return await self._router.call(self.node_id, request, CALL_TIMEOUT_S)
        except STORE_ERRORS as exc:
            raise RoutingError(str(exc)) from None

    async def _run(self) -> None:
        await self._released.wait()
        while (item := await self._queue.get()) is not None:
            method, body = item
            try:
                response = await self.call(method, body)
            except _CALL_ERRORS as exc:
                logger.warning("forward: node %s did not take %s: %s", self.node_id, method, exc)
                self._on_lost()
                return
            if response.status == 404:
                self._on_lost()
                return
            if response.status != 200:
                logger.warning(
                    "forward: node %s refused %s: %s", self.node_id, method, response.body[:200]
                )


class ForwardCluster:
    """Forwards to and from rooms of other nodes; serves the ``forwards`` calls.

    :param bind_host: where the relay socket listens (the media bind address).
    :param advertised_ip: the address other nodes send media to (this node's IP).
    """

    def __init__(
        self, router: Router, rooms: RoomManager, bind_host: str, advertised_ip: str
    ) -> None:
        self._router = router
        self._rooms = rooms
        self._bind_host = bind_host
        self._advertised_ip = advertised_ip
        self.relay = MediaRelay()
        self.links: dict[bytes, tuple[str, RemoteLink]] = {}
        """session -> (destination node, link)."""
        self.copies: dict[bytes, tuple[str, Room, RemoteCopy]] = {}
        """session -> (source node, destination room, copy)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None

    # --- the source side ---------------------------------------------------------------------

    async def forward(
        self, source: Room, participant: Participant, destination: str, host: str
    ) -> None:
        """Forward ``participant`` of ``source`` to room ``destination`` on node ``host``;
        raises TwirpError."""
        if destination in source.forwards.outgoing.get(participant.identity, {}):
            raise TwirpError("already_exists", "participant is already forwarded there")
        await self._start()
        session = secrets.token_bytes(SESSION_BYTES)
        control = NodeControl(self._router, host, lambda: self._link_lost(session), self._tasks)
        link = RemoteLink(session, participant, source, destination, self.relay, control)
        body = link.open_body(destination, self._router.node_id)
        source.forwards.link(participant.identity, destination, link)
        self.links[session] = (host, link)
        try:
            response = await control.call("Open", body)
        except RoutingError as exc:
            self._link_lost(session)
            raise TwirpError("unavailable", str(exc)) from None
        if response.status != 200:
            self._link_lost(session)
            raise error_from_json(response.status, response.body)
        try:
            peer = _address(json.loads(response.body).get("relay"))
        except (ValueError, AttributeError) as exc:
            self._link_lost(session)
            raise TwirpError("internal", f"node {host} answered: {exc}") from None
        if not link.ended:
            link.start(peer)
        control.release()

    def _link_lost(self, session: bytes) -> None:
        found = self.links.pop(session, None)
        if found is None:
            return
        link = found[1]
        link.end()
        link.control.close()
        link.source_room.forwards.unlink(link.participant.identity, link.destination)

    # --- serving the other nodes' calls --------------------------------------------------

    async def serve(self, request: RpcRequest) -> RpcResponse:
        try:
            body = json.loads(request.body)
            if not isinstance(body, dict):
                raise ValueError("the body must be an object")
            session = bytes.fromhex(str(body.get("session", "")))
            if len(session) != SESSION_BYTES:
                raise ValueError("bad session")
            if request.method == "Open":
                return await self._open(session, body)
            return self._serve(request.method, session, body)
        except ValueError as exc:
            logger.warning("forward: unreadable %s call: %s", request.method, exc)
            return _error(TwirpError("malformed", f"unreadable forwards call: {exc}"))
        except ForwardError as exc:
            return _error(TwirpError(exc.code, str(exc)))

    def _serve(self, method: str, session: bytes, body: Json) -> RpcResponse:
        if method in ("Layers", "Stopped"):
            top = _layer(body.get("top")) if method == "Layers" else -1
            found_link = self.links.get(session)
            if found_link is None:
                return _UNKNOWN
            if method == "Layers":
                found_link[1].want_layers(str(body.get("sid", "")), top)
            else:
                self._link_lost(session)
            return _DONE
        found = self.copies.get(session)
        if found is None or found[2].ended_here:
            return _UNKNOWN
        _, room, copy = found
        match method:
            case "Update":
                copy.update(*_info_of(body))
                room.forwards.copy_changed(copy)
                if body.get("permission_changed") is True:
                    room.forwards.copy_permission_changed(copy)
            case "Publish":
                track = copy.add_track(TrackOffer.from_json(body.get("track")))
                if track is not None:
                    room.forwards.track_arrived(copy, track)
            case "Unpublish":
                gone = copy.remove_track(str(body.get("sid", "")))
                if gone is not None:
                    room.forwards.track_left(copy, gone)
            case "Stop":
                copy.quiet = True
                self._drop_copy(room, copy)
            case _:
                return RpcResponse(404, b'{"code":"bad_route","msg":"unknown forwards call"}')
        return _DONE

    async def _open(self, session: bytes, body: Json) -> RpcResponse:
        name, source_node = str(body.get("room", "")), str(body.get("source_node", ""))
        peer = _address(body.get("relay"))
        info, permission = _info_of(body)
        offers = body.get("tracks")
        if not name or not source_node or not isinstance(offers, list):
            raise ValueError("room, source node and tracks are required")
        tracks = [TrackOffer.from_json(offer) for offer in offers]
        if session in self.copies:
            raise ForwardError("already_exists", "forward already open")
        room = self._rooms.get_or_create(name, may_create=True)
        if room.closed:
            raise ForwardError("not_found", "destination room does not exist")
        room.forwards.check_arrival(info.identity)
        await self._start()
        control = NodeControl(
            self._router, source_node, lambda: self._copy_lost(session), self._tasks
        )
        control.release()
        copy = RemoteCopy(
            session, info, self.relay, peer, control, room.settings.dynacast_pause_delay
        )
        copy.update(info, permission)
        for offer in tracks:
            copy.add_track(offer)
        self.copies[session] = (source_node, room, copy)
        self.relay.sessions[session] = copy
        room.forwards.arrive(copy)
        return RpcResponse(200, json.dumps({"relay": list(self.relay.address)}).encode())

    def _copy_lost(self, session: bytes) -> None:
        found = self.copies.get(session)
        if found is not None:
            found[2].quiet = True
            self._drop_copy(found[1], found[2])

    def _drop_copy(self, room: Room, copy: RemoteCopy) -> None:
        if room.forwards.incoming.get(copy.identity) is copy:
            room.forwards.stop(copy.identity)
        else:
            copy.ended()

    # --- running -------------------------------------------------------------------------

    async def _start(self) -> None:
        await self.relay.start(self._bind_host, self._advertised_ip)
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="forward-tick")

    async def _tick(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            for session, (_, link) in list(self.links.items()):
                if link.ended:
                    del self.links[session]
            for session, (_, _, copy) in list(self.copies.items()):
                if copy.ended_here:
                    del self.copies[session]
                else:
                    copy.tick(now)
            ticks += 1
            if ticks % LIVENESS_TICKS == 0:
                await self._end_orphans()

    async def _end_orphans(self) -> None:
        """Forwards whose other node is no longer alive end here."""
        if not self.links and not self.copies:
            return
        try:
            alive = set(await self._router.live_peers())
        except STORE_ERRORS as exc:
            logger.warning("forward: other nodes unknown: %s", exc)
            return
        for session, (node, _) in list(self.links.items()):
            if node not in alive:
                logger.info("forward: node %s is gone; forwarding to it stopped", node)
                self._link_lost(session)
        for session, (node, _, _) in list(self.copies.items()):
            if node not in alive:
                logger.info("forward: node %s is gone; its forwarded participant leaves", node)
                self._copy_lost(session)

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._ticker] if self._ticker is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.relay.close()


def _error(error: TwirpError) -> RpcResponse:
    return RpcResponse(error.status, json.dumps({"code": error.code, "msg": error.msg}).encode())


def _layer(value: object) -> int:
    """A spatial layer wished for: -1 (none) to the highest there is (2)."""
    if not isinstance(value, int) or not -1 <= value <= 2:
        raise ValueError("expected a layer from -1 to 2")
    return value


def _address(value: object) -> tuple[str, int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], str)
        or not isinstance(value[1], int)
        or not 0 < value[1] < 65536
    ):
        raise ValueError("bad relay address")
    return value[0], value[1]


def _info_of(body: Json) -> tuple[models.ParticipantInfo, rtc.SubscriptionPermission | None]:
    info = decode_message(models.ParticipantInfo, body.get("info"))
    if not info.identity:
        raise ValueError("the participant has no identity")
    raw = body.get("permission")
    permission = decode_message(rtc.SubscriptionPermission, raw) if raw is not None else None
    return info, permission
