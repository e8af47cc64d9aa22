"""Raw signaling over aiohttp, for what the SDK does not expose."""

from __future__ import annotations

import re
import secrets

import aiohttp
from aioice import stun
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
