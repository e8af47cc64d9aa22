"""Raw signaling over aiohttp, for what the SDK does not expose."""

from __future__ import annotations

import base64
import gzip
import re
import secrets

import aiohttp
from aioice import stun
from livekit.protocol import models
from livekit.protocol import rtc as proto

from tests.e2e.harness import ServerProcess, make_token


async def open_signal(
    http: aiohttp.ClientSession, server: ServerProcess, identity: str, room: str = "frames"
) -> aiohttp.ClientWebSocketResponse:
    token = make_token(identity, room)
    ws = await http.ws_connect(f"{server.ws_url}/rtc?access_token={token}&protocol=15")
    first = await ws.receive_bytes(timeout=10)
    response = proto.SignalResponse()
    response.ParseFromString(first)
    assert response.WhichOneof("message") == "join"
    return ws


async def wait_closed(ws: aiohttp.ClientWebSocketResponse) -> None:
    while True:
        message = await ws.receive(timeout=10)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return
        assert message.type is aiohttp.WSMsgType.BINARY


async def wait_for_pong(ws: aiohttp.ClientWebSocketResponse) -> int:
    while True:
        response = proto.SignalResponse()
        response.ParseFromString(await ws.receive_bytes(timeout=10))
        if response.WhichOneof("message") == "pong_resp":
            return int(response.pong_resp.last_ping_timestamp)


def binding_request(
    ufrag: str, pwd: str, *, nominate: bool = True, remote: str = "client"
) -> bytes:
    """A client's ICE connectivity check for the server's ``ufrag``/``pwd`` (RFC 8445 7.2)."""
    message = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.REQUEST,
        transaction_id=secrets.token_bytes(12),
    )
    message.attributes["USERNAME"] = f"{ufrag}:{remote}"
    message.attributes["PRIORITY"] = 1
    message.attributes["ICE-CONTROLLING"] = 1
    if nominate:
        message.attributes["USE-CANDIDATE"] = None
    message.add_message_integrity(pwd.encode())
    message.add_fingerprint()
    return bytes(message)


async def ice_credentials(ws: aiohttp.ClientWebSocketResponse) -> tuple[str, str]:
    """The server's ICE ufrag and password from its first subscriber offer."""
    while True:
        response = proto.SignalResponse()
        response.ParseFromString(await ws.receive_bytes(timeout=10))
        if response.WhichOneof("message") == "offer":
            ufrag = re.search(r"a=ice-ufrag:(\S+)", response.offer.sdp)
            pwd = re.search(r"a=ice-pwd:(\S+)", response.offer.sdp)
            assert ufrag and pwd
            return ufrag[1], pwd[1]


def join_request_param(
    *,
    gzipped: bool = True,
    metadata: str = "",
    attributes: dict[str, str] | None = None,
    reconnect_sid: str = "",
) -> str:
    """A ``join_request`` query value as livekit-client builds one (protocol 17, gzipped when
    the browser can); ``reconnect_sid`` makes it a resume."""
    join = proto.JoinRequest(
        client_info=models.ClientInfo(sdk=models.ClientInfo.JS, protocol=17),
        metadata=metadata,
        participant_attributes=attributes or {},
        reconnect=bool(reconnect_sid),
        participant_sid=reconnect_sid,
    )
    payload = join.SerializeToString()
    wrapped = proto.WrappedJoinRequest(
        compression=(
            proto.WrappedJoinRequest.Compression.GZIP
            if gzipped
            else proto.WrappedJoinRequest.Compression.NONE
        ),
        join_request=gzip.compress(payload) if gzipped else payload,
    )
    return base64.urlsafe_b64encode(wrapped.SerializeToString()).decode().rstrip("=")
