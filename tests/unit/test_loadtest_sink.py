"""``--sink``: the kernel filter drops RTP and keeps what keeps a session alive, and a
subscriber sinks only once every expected track flows."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from loadtest.params import parse_args
from loadtest.sink import MIN_PACKETS, drop_rtp, media_flowing

DATAGRAMS = {
    "stun": bytes([0x00, 0x01]) + bytes(18),
    "dtls": bytes([22, 0xFE, 0xFD]) + bytes(20),
    "rtp": bytes([0x80, 96]) + bytes(30),
    "rtp with marker": bytes([0x80, 0x80 | 111]) + bytes(30),
    "rtcp sr": bytes([0x80, 200]) + bytes(26),
    "rtcp pli": bytes([0x81, 206]) + bytes(10),
}


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    yield receiver, sender
    receiver.close()
    sender.close()


def _exchange(receiver: socket.socket, sender: socket.socket) -> list[str]:
    names = {data: name for name, data in DATAGRAMS.items()}
    for data in DATAGRAMS.values():
        sender.sendto(data, receiver.getsockname())
    received: list[str] = []
    receiver.settimeout(0.5)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and len(received) < len(DATAGRAMS):
        try:
            received.append(names[receiver.recv(100)])
        except TimeoutError:
            break
    return received


def test_filter_drops_rtp_only(pair: tuple[socket.socket, socket.socket]) -> None:
    receiver, sender = pair
    assert sorted(_exchange(receiver, sender)) == sorted(DATAGRAMS)
    drop_rtp(receiver)
    assert sorted(_exchange(receiver, sender)) == ["dtls", "rtcp pli", "rtcp sr", "stun"]


def test_sinks_once_every_expected_track_flows() -> None:
    tracks = {1: "TR_audio", 2: "TR_video", 3: "TR_video"}  # two SSRCs of one video track
    assert not media_flowing({1: MIN_PACKETS}, tracks, 2)
    assert not media_flowing({1: MIN_PACKETS, 2: MIN_PACKETS - 1}, tracks, 2)
    assert not media_flowing({2: MIN_PACKETS, 3: MIN_PACKETS}, tracks, 2)
    assert media_flowing({1: MIN_PACKETS, 2: MIN_PACKETS}, tracks, 2)
    assert media_flowing({7: MIN_PACKETS, 8: MIN_PACKETS}, {}, 2)  # SSRCs not announced yet
    assert not media_flowing({}, tracks, 0)  # nothing expected: never sinks


def test_sink_flag() -> None:
    base = ["--url", "ws://127.0.0.1:7880", "--api-key", "k", "--api-secret", "s"]
    assert not parse_args([*base, "--subscribers", "1"], {}).sink
    assert parse_args([*base, "--subscribers", "1", "--sink"], {}).sink
