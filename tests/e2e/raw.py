"""Raw signaling over aiohttp, for what the SDK does not expose."""

from __future__ import annotations

import aiohttp
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
