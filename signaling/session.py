"""One ``/rtc`` WebSocket: reads SignalRequests, dispatches them, writes SignalResponses."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from aiohttp import WSMsgType
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from sfu.limits import LimitExceededError
from sfu.participant import Participant, ParticipantState
from sfu.room import Room
from sfu.tasks import cancel_and_wait
from signaling.scenarios import simulate
from signaling.sink import WebSocketSink
from signaling.socket import SignalSocket

logger = logging.getLogger(__name__)

#: LiveKit refreshes the client's token every 5 minutes (`roommanager.go rtcSessionWorker`).
TOKEN_REFRESH_INTERVAL_S = 300.0


def parse_request(message_type: WSMsgType, data: bytes | str) -> rtc.SignalRequest:
    """Decode one frame; raises ValueError for anything that is not a SignalRequest."""
    request = rtc.SignalRequest()
    try:
        if message_type is WSMsgType.BINARY and isinstance(data, bytes):
            request.ParseFromString(data)
        elif message_type is WSMsgType.TEXT and isinstance(data, str):
            json_format.Parse(data, request, ignore_unknown_fields=True)
        else:
            raise ValueError(f"unexpected frame type {message_type.name}")
    except (DecodeError, json_format.ParseError, RecursionError) as exc:
        raise ValueError(f"undecodable signal request: {exc}") from exc
    return request


class SignalSession:
    """Dispatches the requests of one participant to it and its room.

    :param refresh_token: makes a fresh token for the client, for the named room (LiveKit sends
        one at start and every 5 minutes; a moved participant gets one for its new room).
    """

    def __init__(
        self,
        ws: SignalSocket,
        sink: WebSocketSink,
        room: Room,
        participant: Participant,
        refresh_token: Callable[[str], str],
    ) -> None:
        self._ws = ws
        self._sink = sink
        self._room = room
        self.participant = participant
        self._refresh_token = refresh_token
        participant.on_moved = self._moved_to
        self.log = participant.log
        self._leave_reason: models.DisconnectReason = models.DisconnectReason.SIGNAL_CLOSE
        self._socket_lost = False
        """The connection ended without a leave: the client may resume (LiveKit C.5)."""

    def _moved_to(self, room_name: str, room: Room | None) -> str:
        """The server API moves the participant: the token the client gets is for the new
        room, and requests go to that room when it is on this node."""
        if room is not None:
            self._room = room
        return self._refresh_token(room_name)

    async def run(self) -> None:
        """Read until the client leaves or the connection ends; then remove the participant,
        or keep it for a resume when only the socket went away."""
        refresher = asyncio.get_running_loop().create_task(
            self._refresh_tokens(), name="refresh-token"
        )
        try:
            await self._read_loop()
        finally:
            await cancel_and_wait(refresher)
            await self._end()

    async def _end(self) -> None:
        participant = self.participant
        if participant.sink is not self._sink:
            return  # resumed on another connection meanwhile: that session owns it now
        if self._socket_lost and participant.state is ParticipantState.ACTIVE:
            # LiveKit keeps a participant whose socket dropped while its media transport is
            # up, with no timer: ICE consent ends it if the client is really gone.
            self.log.info("signal connection lost; kept for a resume")
            participant.detach_signal()
            return
        await self._room.remove(participant, self._leave_reason)

    async def _read_loop(self) -> None:
        self._socket_lost = True  # unless a leave or a refusal says otherwise below
        async for message in self._ws:
            if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE, WSMsgType.CLOSING):
                self.log.info("signal connection error: %s", self._ws.exception())
                return
            try:
                request = parse_request(message.type, message.data)
            except ValueError as exc:
                # Garbage from one client ends that client's connection, nothing else.
                self.log.warning("closing signal connection: %s", exc)
                self._socket_lost = False
                self._leave_reason = models.DisconnectReason.STATE_MISMATCH
                await self._ws.close(code=1007, message=b"invalid signal request")
                return
            self._sink.encoding = "json" if message.type is WSMsgType.TEXT else "binary"
            if not await self.dispatch(request):
                self._socket_lost = False
                return

    async def dispatch(self, request: rtc.SignalRequest) -> bool:
        """Handle one request (LiveKit ``signalhandler.go``); False ends the session."""
        participant = self.participant
        try:
            match request.WhichOneof("message"):
                case "offer":
                    await participant.handle_offer(request.offer)
                case "answer":
                    await participant.handle_answer(request.answer)
                case "trickle":
                    await participant.handle_trickle(request.trickle, _candidate(request.trickle))
                case "leave":
                    self._leave_reason = models.DisconnectReason.CLIENT_INITIATED
                    return False
                case "add_track":
                    participant.handle_add_track(request.add_track)
                case "mute":
                    participant.handle_mute(request.mute)
                case "subscription_permission":
                    self._room.update_subscription_permission(
                        participant, request.subscription_permission
                    )
                case "subscription":
                    self._room.update_subscription(participant, request.subscription)
                case "track_setting":
                    participant.update_track_settings(request.track_setting)
                case "update_metadata":
                    self._update_metadata(request.update_metadata)
                case "ping":
                    participant.send(rtc.SignalResponse(pong=_now_ms()))
                case "ping_req":
                    pong = rtc.Pong(
                        last_ping_timestamp=request.ping_req.timestamp, timestamp=_now_ms()
                    )
                    participant.send(rtc.SignalResponse(pong_resp=pong))
                case "sync_state":
                    if not self._room.sync_state(participant, request.sync_state):
                        self._leave_reason = models.DisconnectReason.STATE_MISMATCH
                        return False
                case "simulate":
                    outcome = await simulate(self._room, participant, request.simulate)
                    if outcome is not None:
                        self._leave_reason = outcome
                        return False
                case None:
                    self.log.debug("x empty signal request ignored")
                case other:
                    self.log.info("signal request %r is not supported yet; ignored", other)
        except ValueError as exc:
            self.log.warning("signal request refused: %s", exc)
        return True

    def _update_metadata(self, update: rtc.UpdateParticipantMetadata) -> None:
        participant = self.participant
        if not participant.grant.can_update_own_metadata:
            self._respond(update.request_id, rtc.RequestResponse.NOT_ALLOWED, "permission denied")
            return
        try:
            self._room.update_participant_metadata(participant, update)
        except LimitExceededError as exc:
            # LiveKit answers LIMIT_EXCEEDED and changes nothing (participant.go).
            self._respond(update.request_id, rtc.RequestResponse.LIMIT_EXCEEDED, str(exc))
            return
        # Success responses go only to protocol >= 15 clients (LiveKit PR #2926).
        if participant.params.protocol >= 15:
            self._respond(update.request_id, rtc.RequestResponse.OK, "")

    def _respond(self, request_id: int, reason: rtc.RequestResponse.Reason, message: str) -> None:
        response = rtc.RequestResponse(request_id=request_id, reason=reason, message=message)
        self.participant.send(rtc.SignalResponse(request_response=response))

    async def _refresh_tokens(self) -> None:
        while True:
            self.participant.send(
                rtc.SignalResponse(refresh_token=self._refresh_token(self._room.name))
            )
            await asyncio.sleep(TOKEN_REFRESH_INTERVAL_S)


def _candidate(trickle: rtc.TrickleRequest) -> dict[str, object]:
    try:
        init = json.loads(trickle.candidateInit)
    except ValueError as exc:
        raise ValueError(f"candidateInit is not JSON: {exc}") from exc
    if not isinstance(init, dict):
        raise ValueError("candidateInit is not a JSON object")
    return init


def _now_ms() -> int:
    return int(time.time() * 1000)
