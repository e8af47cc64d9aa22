"""The server's own RPCs to participants (sfu/server_rpc.py): answers, errors and timeouts
with LiveKit's codes."""

from __future__ import annotations

import asyncio

import pytest
from livekit.protocol import models

from sfu import server_rpc
from sfu.server_rpc import RpcFailed, ServerRpcs


def _request(sent: list[bytes]) -> models.RpcRequest:
    packet = models.DataPacket()
    packet.ParseFromString(sent[-1])
    assert packet.participant_identity == packet.rpc_request.id, "the id stands for the caller"
    return packet.rpc_request


async def test_an_answer_comes_back() -> None:
    rpcs, sent = ServerRpcs(), list[bytes]()
    call = asyncio.ensure_future(rpcs.call("bob", sent.append, "greet", "hi", 5000))
    await asyncio.sleep(0)
    request = _request(sent)
    assert (request.method, request.payload, request.response_timeout_ms) == ("greet", "hi", 5000)
    ack = models.DataPacket(rpc_ack=models.RpcAck(request_id=request.id))
    assert rpcs.consume(ack)
    response = models.RpcResponse(request_id=request.id, payload="hello")
    assert rpcs.consume(models.DataPacket(rpc_response=response))
    assert await call == "hello"
    assert not rpcs.consume(models.DataPacket(rpc_ack=models.RpcAck(request_id=request.id)))


async def test_errors_and_timeouts_carry_livekits_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    rpcs, sent = ServerRpcs(), list[bytes]()
    call = asyncio.ensure_future(rpcs.call("bob", sent.append, "greet", "", 0))
    await asyncio.sleep(0)
    request = _request(sent)
    error = models.RpcError(code=1400, message="Method not supported at destination")
    rpcs.consume(
        models.DataPacket(rpc_response=models.RpcResponse(request_id=request.id, error=error))
    )
    with pytest.raises(RpcFailed) as failed:
        await call
    assert failed.value.code == 1400 and str(failed.value).startswith("RpcError 1400")
    monkeypatch.setattr(server_rpc, "ACK_TIMEOUT_S", 0.01)
    with pytest.raises(RpcFailed) as unanswered:
        await rpcs.call("bob", sent.append, "greet", "", 0)
    assert unanswered.value.code == server_rpc.CONNECTION_TIMEOUT
    with pytest.raises(RpcFailed) as too_large:
        await rpcs.call("bob", sent.append, "greet", "x" * (16 * 1024), 0)
    assert too_large.value.code == server_rpc.REQUEST_PAYLOAD_TOO_LARGE


async def test_a_recipient_that_leaves_fails_its_calls_only() -> None:
    rpcs, sent = ServerRpcs(), list[bytes]()
    to_bob = asyncio.ensure_future(rpcs.call("bob", sent.append, "m", "", 5000))
    to_ann = asyncio.ensure_future(rpcs.call("ann", sent.append, "m", "", 5000))
    await asyncio.sleep(0)
    rpcs.recipient_gone("bob")
    with pytest.raises(RpcFailed) as gone:
        await to_bob
    assert gone.value.code == server_rpc.RECIPIENT_DISCONNECTED
    assert not to_ann.done()
    to_ann.cancel()
