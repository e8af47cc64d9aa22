"""Server API calls reach the node hosting their room, wherever they arrive.

LiveKit routes room-level calls to psrpc topic = room name and participant calls to
``<room>_<identity>``, both served by the hosting node; CreateRoom goes to the node the
selector picks. Here the receiving node asks the router for the room's node and, when that is
another node, forwards the request there; the host checks the token again and answers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from google.protobuf import message_factory
from google.protobuf.message import Message

from routing.router import Router, RoutingError, RpcHandler, RpcRequest, RpcResponse
from routing.store import STORE_ERRORS
from sfu.rooms import RoomManager
from signaling.twirp import TwirpError, TwirpServer, error_from_json

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def routing_errors_as_twirp() -> Iterator[None]:
    """Placing or finding a room failed: the API caller gets ``unavailable``."""
    try:
        yield
    except RoutingError as exc:
        raise TwirpError("unavailable", f"no node can host the room: {exc}") from None
    except STORE_ERRORS as exc:
        logger.warning("api routing failed: %s", exc)
        raise TwirpError("unavailable", "room routing is unavailable") from None


def request_room(method: str, message: Message) -> tuple[str, bool] | None:
    """(room, may create) a call acts on; None for calls about every room (ListRooms)."""
    if method == "CreateRoom":
        return str(getattr(message, "name", "")), True
    room = getattr(message, "room", None)
    if isinstance(room, str) and room:
        return room, False
    return None


class ApiForwarder:
    """Plugged into :class:`TwirpServer`: forwards calls for remote rooms, serves forwarded
    calls from other nodes."""

    def __init__(self, router: Router, rooms: RoomManager, twirp: TwirpServer) -> None:
        self._router = router
        self._rooms = rooms
        self._twirp = twirp
        self.internal: dict[str, RpcHandler] = {}
        """Calls between nodes that are not the server API, by service name."""

    async def __call__(
        self, service: str, method: str, message: Message, authorization: str
    ) -> Message | None:
        target = request_room(method, message)
        if target is None:
            return None
        room, create = target
        if not room or self._rooms.get(room) is not None:
            return None  # hosted here (or nothing to route): run it here
        with routing_errors_as_twirp():
            preferred = str(getattr(message, "node_id", "")) if create else ""
            host = await self._router.room_host(room, create=create, preferred=preferred)
        if host is None or host == self._router.node_id:
            return None
        request = RpcRequest(
            reply_to=self._router.reply_channel(),
            service=service,
            method=method,
            authorization=authorization,
            body=message.SerializeToString(),
        )
        try:
            response = await self._router.call(host, request)
        except RoutingError as exc:
            raise TwirpError("unavailable", str(exc)) from None
        if response.status != 200:
            raise error_from_json(response.status, response.body)
        descriptor = self._twirp.services[service].descriptor.methods_by_name[method]
        output = message_factory.GetMessageClass(descriptor.output_type)()
        output.ParseFromString(response.body)
        return output

    async def serve(self, request: RpcRequest) -> RpcResponse:
        internal = self.internal.get(request.service)
        if internal is not None:
            return await internal(request)
        status, body = await self._twirp.run_forwarded(
            request.service, request.method, request.authorization, request.body
        )
        return RpcResponse(status, body)
