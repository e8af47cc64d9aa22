"""RPC from the server to a participant (``RoomService.PerformRpc``), as LiveKit performs it.

The request goes to the participant as a reliable ``DataPacket`` with an ``rpc_request``,
stamped with the request id as the caller's identity; the participant's SDK answers with an
``rpc_ack`` (within :data:`ACK_TIMEOUT_S`) and an ``rpc_response`` addressed to that identity,
which the room hands here instead of relaying (LiveKit ``participant.go PerformRpc``). Errors
carry LiveKit's RPC codes and texts ("RpcError 1502: Response timeout").
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from livekit.protocol import models

#: LiveKit's RPC limits: the round trip the ack must make, the default response timeout and
#: the largest payload (``utils.DataChannelRpc*``).
ACK_TIMEOUT_S = 2.0
DEFAULT_RESPONSE_TIMEOUT_MS = 10_000
MAX_PAYLOAD_BYTES = 15 * 1024

#: LiveKit's built-in RPC error codes and messages.
APPLICATION_ERROR = 1500
CONNECTION_TIMEOUT = 1501
RESPONSE_TIMEOUT = 1502
RECIPIENT_DISCONNECTED = 1503
REQUEST_PAYLOAD_TOO_LARGE = 1402
MESSAGES = {
    APPLICATION_ERROR: "Application error in method handler",
    CONNECTION_TIMEOUT: "Connection timeout",
    RESPONSE_TIMEOUT: "Response timeout",
    RECIPIENT_DISCONNECTED: "Recipient disconnected",
    REQUEST_PAYLOAD_TOO_LARGE: "Request payload too large",
}


class RpcFailed(Exception):
    """An RPC that did not return a payload: LiveKit's code, message and data."""

    def __init__(self, code: int, message: str = "", data: str = "") -> None:
        self.code = code
        self.message = message or MESSAGES.get(code, "")
        self.data = data
        text = f"RpcError {code}: {self.message}"
        super().__init__(f"{text}: {data}" if data else text)


@dataclass
class _Pending:
    identity: str
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    response: asyncio.Future[models.RpcResponse] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ServerRpcs:
    """The server's RPCs in flight in one room."""

    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}

    def consume(self, packet: models.DataPacket) -> bool:
        """Take a participant's ack or response to one of ours; False for anything else."""
        match packet.WhichOneof("value"):
            case "rpc_ack" if packet.rpc_ack.request_id in self._pending:
                self._pending[packet.rpc_ack.request_id].acked.set()
                return True
            case "rpc_response" if packet.rpc_response.request_id in self._pending:
                pending = self._pending[packet.rpc_response.request_id]
                pending.acked.set()
                if not pending.response.done():
                    pending.response.set_result(packet.rpc_response)
                return True
            case _:
                return False

    async def call(
        self,
        identity: str,
        send: Callable[[bytes], None],
        method: str,
        payload: str,
        response_timeout_ms: int = 0,
    ) -> str:
        """Send one request to ``identity`` with ``send`` (its reliable data) and wait for
        the answer; RpcFailed when there is none or it is an error."""
        if len(payload.encode()) > MAX_PAYLOAD_BYTES:
            raise RpcFailed(REQUEST_PAYLOAD_TOO_LARGE)
        timeout_ms = response_timeout_ms if response_timeout_ms > 0 else DEFAULT_RESPONSE_TIMEOUT_MS
        request_id = str(uuid.uuid4())
        packet = models.DataPacket(
            kind=models.DataPacket.Kind.RELIABLE,
            participant_identity=request_id,
            rpc_request=models.RpcRequest(
                id=request_id,
                method=method,
                payload=payload,
                response_timeout_ms=timeout_ms,
                version=1,
            ),
        )
        pending = self._pending[request_id] = _Pending(identity)
        try:
            send(packet.SerializeToString())
            try:
                await asyncio.wait_for(pending.acked.wait(), ACK_TIMEOUT_S)
            except TimeoutError:
                raise RpcFailed(CONNECTION_TIMEOUT) from None
            try:
                response = await asyncio.wait_for(pending.response, timeout_ms / 1000)
            except TimeoutError:
                raise RpcFailed(RESPONSE_TIMEOUT) from None
        finally:
            del self._pending[request_id]
        if response.WhichOneof("value") == "error":
            error = response.error
            raise RpcFailed(error.code, error.message, error.data)
        return response.payload

    def recipient_gone(self, identity: str) -> None:
        """A participant left: every call to it fails as LiveKit's would."""
        for pending in self._pending.values():
            if pending.identity != identity:
                continue
            pending.acked.set()
            if not pending.response.done():
                pending.response.set_exception(RpcFailed(RECIPIENT_DISCONNECTED))
