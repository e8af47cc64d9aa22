"""Bad tokens and bad frames get a clear answer and harm nobody else."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable

import aiohttp
import jwt
import pytest
from livekit import rtc
from livekit.protocol import rtc as proto

from tests.e2e.harness import API_KEY, API_SECRET, ServerProcess, make_token
from tests.e2e.raw import open_signal, wait_closed, wait_for_pong
from tests.e2e.sdk import EventLog, joined, wait_until


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": API_KEY,
        "sub": "eve",
        "nbf": now - 10,
        "exp": now + 600,
        "video": {"roomJoin": True, "room": "bad"},
    }
    claims.update(overrides)
    return claims


def _unsigned_token() -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(_claims()).encode())}."


BAD_TOKENS: dict[str, Callable[[], str]] = {
    "expired": lambda: jwt.encode(_claims(exp=int(time.time()) - 120), API_SECRET, "HS256"),
    "unsigned": _unsigned_token,
    "wrong_secret": lambda: jwt.encode(_claims(), "not-the-secret-not-the-secret-xx", "HS256"),
    "wrong_issuer": lambda: jwt.encode(_claims(iss="someone-else"), API_SECRET, "HS256"),
    "no_grant": lambda: jwt.encode(_claims(video={}), API_SECRET, "HS256"),
    "no_room_join": lambda: jwt.encode(_claims(video={"room": "bad"}), API_SECRET, "HS256"),
    "no_exp": lambda: jwt.encode({k: v for k, v in _claims().items() if k != "exp"}, API_SECRET),
    "garbage": lambda: "not-a-jwt",
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_bad_token_refused_before_upgrade(server: ServerProcess, kind: str) -> None:
    token = BAD_TOKENS[kind]()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{server.ws_url}/rtc?access_token={token}&protocol=15")
        assert refused.value.status == 401
        async with http.get(
            f"{server.http_url}/rtc/validate", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 401
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert await response.text()


async def test_missing_token_and_bad_header(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_url}/rtc/validate") as response:
            assert response.status == 401
        token = make_token("x", "r")
        headers = {"Authorization": f"Token {token}"}
        async with http.get(f"{server.http_url}/rtc/validate", headers=headers) as response:
            assert response.status == 401


async def test_validate_accepts_good_token(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        token = make_token("valid", "r")
        async with http.get(f"{server.http_url}/rtc/validate?access_token={token}") as response:
            assert response.status == 200
            assert await response.text() == "success"


async def test_single_pc_endpoints_need_a_join_request(server: ServerProcess) -> None:
    token = make_token("v1", "r")
    async with aiohttp.ClientSession() as http:
        for path in ("/rtc/v1", "/rtc/v1/validate"):
            async with http.get(f"{server.http_url}{path}?access_token={token}") as response:
                assert response.status == (404 if path == "/rtc/v1" else 400)
                assert response.headers["Access-Control-Allow-Origin"] == "*"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{server.ws_url}/rtc/v1?access_token={token}")
        assert refused.value.status == 400


async def test_cors_preflight(server: ServerProcess) -> None:
    headers = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    async with aiohttp.ClientSession() as http:
        async with http.options(f"{server.http_url}/rtc/validate", headers=headers) as response:
            assert response.status < 300
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()
            assert response.headers["Access-Control-Max-Age"] == "86400"


BAD_FRAMES: dict[str, bytes | str] = {
    "garbage_bytes": b"\xff\xfe\x00garbage\x13\x37" * 10,
    "truncated_protobuf": proto.SignalRequest(
        offer=proto.SessionDescription(type="offer", sdp="v=0\r\n" * 50)
    ).SerializeToString()[:40],
    "garbage_text": "{not json",
}


@pytest.mark.sdk
@pytest.mark.parametrize("kind", sorted(BAD_FRAMES))
async def test_bad_frame_closes_only_that_connection(server: ServerProcess, kind: str) -> None:
    async with joined(server, "bystander", f"other-{kind}") as bystander:
        disconnected = EventLog(bystander, "disconnected")
        async with aiohttp.ClientSession() as http:
            ws = await open_signal(http, server, f"sender-{kind}")
            frame = BAD_FRAMES[kind]
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
            await wait_closed(ws)
        # The server still serves: the bystander stays, a new participant joins.
        async with joined(server, "newcomer", f"other-{kind}") as newcomer:
            await wait_until(lambda: "bystander" in newcomer.remote_participants)
        assert not disconnected.items
        assert bystander.connection_state == rtc.ConnectionState.CONN_CONNECTED


async def test_oversized_frame_closes_only_that_connection(
    server: ServerProcess,
) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await open_signal(http, server, "big-sender")
        other = await open_signal(http, server, "big-bystander")
        # Over limit.signal_message_size_limit (2 MiB). The server may close while the frame is
        # still being written, which resets our send: that is the refusal too.
        with contextlib.suppress(ConnectionError):
            await ws.send_bytes(b"\x0a" + b"\x00" * (3 * 1024 * 1024))
        await wait_closed(ws)
        ping = proto.SignalRequest(ping_req=proto.Ping(timestamp=123))
        await other.send_bytes(ping.SerializeToString())
        assert await wait_for_pong(other) == 123
        await other.close()


async def test_json_frames_get_json_answers(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await open_signal(http, server, "json-client")
        await ws.send_str(json.dumps({"pingReq": {"timestamp": "42"}}))
        while True:
            message = await ws.receive(timeout=10)
            if message.type is aiohttp.WSMsgType.BINARY:
                continue  # responses queued before the client's first text frame
            assert message.type == aiohttp.WSMsgType.TEXT, message
            body = json.loads(message.data)
            if "pongResp" in body:
                assert body["pongResp"]["lastPingTimestamp"] == "42"
                break
        await ws.close()


async def test_metadata_update_needs_permission(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await open_signal(http, server, "no-meta")
        update = proto.UpdateParticipantMetadata(metadata="x", request_id=7)
        await ws.send_bytes(proto.SignalRequest(update_metadata=update).SerializeToString())
        while True:
            response = proto.SignalResponse()
            response.ParseFromString(await ws.receive_bytes(timeout=10))
            if response.WhichOneof("message") == "request_response":
                assert response.request_response.request_id == 7
                assert response.request_response.reason == proto.RequestResponse.NOT_ALLOWED
                break
            if response.WhichOneof("message") == "update":
                assert all(p.metadata != "x" for p in response.update.participants)
        await ws.close()
