"""Seeded fuzzing of what arrives on the media ports: STUN, DTLS, RTP and RTCP datagrams, from
strangers and from an authenticated ICE path of the attacker's own, and ICE-TCP frames. None of
it may disturb another participant's media or put a traceback in the log."""

from __future__ import annotations

import asyncio
import random
import secrets
import socket
import struct
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aioice import stun

from tests.e2e.harness import ServerProcess, make_token
from tests.e2e.raw import binding_request, ice_credentials
from tests.reliability.conftest import media_keeps_flowing

SEED = 20261205
DATAGRAMS_PER_KIND = 600


def _bad_stun() -> bytes:
    """A binding request whose CHANGE-REQUEST attribute is 2 bytes long: aioice's parser
    raised struct.error on it, and the server logged a traceback per packet."""
    attribute = struct.pack("!HH", 0x0003, 2) + b"\x00\x00\x00\x00"
    return (
        struct.pack("!HHI", 0x0001, len(attribute), stun.COOKIE)
        + secrets.token_bytes(12)
        + attribute
    )


def _fuzzed(rng: random.Random, kind: str) -> bytes:
    size = rng.choice([1, 2, 4, 12, 13, 20, 28, 60, 200, 1200, 1500])
    body = bytearray(rng.randbytes(size))
    first = {"stun": (0, 3), "dtls": (20, 63), "rtp": (128, 191)}[kind]
    body[0] = rng.randint(*first)
    if kind == "rtp" and size >= 12 and rng.random() < 0.5:
        body[1] = rng.choice([96, 111, 200, 201, 205, 206])  # media and RTCP types
    if kind == "stun" and size >= 20 and rng.random() < 0.5:
        body[4:8] = struct.pack("!I", stun.COOKIE)  # gets past the magic-cookie check
        body[2:4] = struct.pack("!H", size - 20)
    return bytes(body)


@asynccontextmanager
async def _attacker(server: ServerProcess, room: str) -> AsyncIterator[tuple[str, str]]:
    """A participant of the attacked room, for the server's ICE credentials it is given."""
    token = make_token("attacker", room)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.ws_url}/rtc?access_token={token}&protocol=15") as ws,
    ):
        yield await ice_credentials(ws)


async def _spray(sock: socket.socket, target: tuple[str, int], datagrams: list[bytes]) -> None:
    for index, datagram in enumerate(datagrams):
        sock.sendto(datagram, target)
        if index % 200 == 199:
            await asyncio.sleep(0.02)  # what the kernel takes, not a benchmark


def _metric(server: ServerProcess, name: str, label: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_fuzzed_datagrams_from_strangers_and_an_authenticated_path(
    server: ServerProcess,
) -> None:
    rng = random.Random(SEED)
    target = ("127.0.0.1", server.udp_port)
    room = "datagrams"
    async with media_keeps_flowing(server, room) as victim, _attacker(server, room) as creds:
        since = time.monotonic()
        ufrag, pwd = creds
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        insider = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        insider.settimeout(5)
        try:
            await _spray(stranger, target, [_bad_stun() for _ in range(5000)])
            insider.sendto(binding_request(ufrag, pwd, remote="attacker"), target)
            answer = stun.parse_message(insider.recv(1500))
            assert answer.message_class is stun.Class.RESPONSE, "the path is authenticated"
            for kind in ("stun", "dtls", "rtp"):
                batch = [_fuzzed(rng, kind) for _ in range(DATAGRAMS_PER_KIND)]
                await _spray(stranger, target, batch)
                await _spray(insider, target, batch)
        finally:
            stranger.close()
            insider.close()
        await asyncio.sleep(1.0)
        assert _metric(server, "livekit_malformed_packet_total", 'protocol="stun"') >= 5000
        logged = [line for line in server.logs().splitlines() if "malformed packet" in line]
        assert len(logged) <= 3, "a flood of bad packets is a few log lines"
        victim.assert_unharmed(since)


async def test_fuzzed_ice_tcp_frames(server: ServerProcess) -> None:
    rng = random.Random(SEED + 1)
    room = "tcp-frames"
    async with media_keeps_flowing(server, room) as victim, _attacker(server, room) as creds:
        since = time.monotonic()
        ufrag, pwd = creds
        for connection in range(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
            frames = (
                [binding_request(ufrag, pwd, remote="attacker")]
                if connection % 2
                else [_bad_stun()]
            )
            frames += [_fuzzed(rng, rng.choice(["stun", "dtls", "rtp"])) for _ in range(100)]
            for frame in frames:
                writer.write(struct.pack("!H", len(frame)) + frame)
            try:
                await writer.drain()
            except ConnectionError:
                pass  # the server may close a connection whose frames make no sense
            writer.close()
            await asyncio.gather(writer.wait_closed(), return_exceptions=True)
            del reader
        victim.assert_unharmed(since)
