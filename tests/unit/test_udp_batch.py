"""The batched send of a fan-out: what one received packet makes us send leaves in one
sendmmsg(2), in order, and everything still arrives without the C helper."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import sfu.ice
from sfu.ice import IceRegistry, UdpMux


class FanOut:
    """Stands in for a publisher's session: each packet is sent to ``count`` subscribers."""

    def __init__(self, mux: UdpMux, target: tuple[str, int], count: int) -> None:
        self.mux = mux
        self.target = target
        self.count = count

    def receive(self, data: bytes) -> None:
        for index in range(self.count):
            self.mux.sendto(data + index.to_bytes(2, "big"), self.target)


async def _fan_out(count: int, *, batch: bool) -> list[bytes]:
    loop = asyncio.get_running_loop()
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    receiver.setblocking(False)
    transport, mux = await loop.create_datagram_endpoint(
        lambda: UdpMux(IceRegistry(), batch=batch), local_addr=("127.0.0.1", 0)
    )
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    try:
        mux.routes[client.getsockname()] = FanOut(mux, receiver.getsockname(), count)  # type: ignore[assignment]
        client.sendto(b"\x80rtp", transport.get_extra_info("sockname"))
        received: list[bytes] = []
        for _ in range(200):
            await asyncio.sleep(0.01)
            while True:
                try:
                    received.append(receiver.recv(2048))
                except BlockingIOError:
                    break
            if len(received) >= count:
                break
        return received
    finally:
        transport.close()
        client.close()
        receiver.close()


@pytest.mark.parametrize("batch", [True, False])
async def test_fan_out_arrives_in_order(batch: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = vars(sfu.ice)["_fastsend"]
    if batch:
        assert real is not None, "the C helper is built by `pip install -e .`"

        class Counting:
            @staticmethod
            def send_batch(fd: int, datagrams: list[Any]) -> int:
                calls.append(len(datagrams))
                return int(real.send_batch(fd, datagrams))

        monkeypatch.setattr(sfu.ice, "_fastsend", Counting)
    received = await _fan_out(300, batch=batch)
    assert received == [b"\x80rtp" + i.to_bytes(2, "big") for i in range(300)]
    # 300 datagrams from one received packet: two system calls (256 + 44), not 300.
    assert calls == ([256, 44] if batch else [])


async def test_what_the_kernel_refuses_goes_through_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Refusing:
        @staticmethod
        def send_batch(fd: int, datagrams: list[Any]) -> int:
            return 3  # as if the socket buffer filled up after three

    monkeypatch.setattr(sfu.ice, "_fastsend", Refusing)
    received = await _fan_out(10, batch=True)
    # The first three were "taken" by the fake kernel and never sent: the other seven are.
    assert received == [b"\x80rtp" + i.to_bytes(2, "big") for i in range(3, 10)]
