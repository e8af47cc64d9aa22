"""Each downtrack protects with a libsrtp session of its own (``Sink.set_sessions``): libsrtp
walks a list of every SSRC a session protected to find a packet's stream, which cost a tenth of
the meeting scenario's server time with one session per subscriber."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
from pylibsrtp import Policy, Session

from sfu.srtp import SrtpProtector
from tests.unit.test_fanout import Capture, _core, _packet

_fastsend = pytest.importorskip("sfu._fastsend")


class Sessions:
    """``session_for``: a new transmit session on one key per call (None while ``ready`` is
    false), with the receiving session for that key."""

    def __init__(self) -> None:
        key = os.urandom(30)
        self.policy = Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)
        self.receiver = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
        self.given: list[SrtpProtector] = []
        self.ready = True

    def __call__(self, downtrack: Any) -> tuple[int, object] | None:
        if not self.ready:
            return None
        protector = SrtpProtector(Session(self.policy))
        self.given.append(protector)
        return protector.context_address, protector


def _transport_protector() -> SrtpProtector:
    """The transport's own session, on another key: a packet it protected would not decrypt
    with the downtracks' key."""
    return SrtpProtector(Session(Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND)))


def test_each_downtrack_gets_its_own_session_on_the_fast_path() -> None:
    inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbox.bind(("127.0.0.1", 0))
    inbox.settimeout(2)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sessions, transport = Sessions(), _transport_protector()
    sink = _fastsend.Sink(plain := Capture())
    sink.set_sessions(sessions, protected := Capture())
    assert sink.set_fast(
        transport.context_address, transport, out.fileno(), inbox.getsockname(), print
    )
    downtracks = {str(i): _core(_fastsend.DownTrackCore, sink, ssrc_out=500 + i) for i in range(3)}
    for sequence in range(4):
        packet = _packet(sequence, 960 * sequence, 42, b"frame %d" % sequence)
        _fastsend.fanout(packet, 12, len(packet), sequence, 960 * sequence, 42, 1.0, downtracks)
    received = [sessions.receiver.unprotect(inbox.recv(2048)) for _ in range(12)]
    assert (
        sorted(int.from_bytes(p[8:12], "big") for p in received)
        == [500] * 4 + [501] * 4 + [502] * 4
    )
    assert len(sessions.given) == 3, "one session per downtrack, asked for once"
    assert all(d.own_session for d in downtracks.values())
    assert not plain.packets and not protected.packets
    inbox.close()
    out.close()


def test_without_a_fast_path_the_own_session_goes_on_and_the_index_continues() -> None:
    """Over ICE-TCP (no fast path) the downtrack protects and hands the datagram to Python;
    when a UDP path comes, the same session goes on, so the receiver reads one stream."""
    sessions = Sessions()
    sessions.ready = False
    sink = _fastsend.Sink(plain := Capture())
    sink.set_sessions(sessions, protected := Capture())
    core = _core(_fastsend.DownTrackCore, sink)
    packet = _packet(1, 960, 7, b"before the keys")
    core.forward(packet, 12, len(packet), 1, 960, 7, 0.0)
    assert len(plain.packets) == 1 and not core.own_session, "no keys: the transport's send"
    sessions.ready = True
    for sequence in range(2, 5):
        packet = _packet(sequence, 960 * sequence, 7, b"over tcp")
        core.forward(packet, 12, len(packet), sequence, 960 * sequence, 7, 0.0)
    assert core.own_session and len(plain.packets) == 1 and len(protected.packets) == 3
    for datagram in protected.packets:
        assert sessions.receiver.unprotect(datagram).endswith(b"over tcp")
    inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbox.bind(("127.0.0.1", 0))
    inbox.settimeout(2)
    transport = _transport_protector()
    sink.set_fast(transport.context_address, transport, inbox.fileno(), inbox.getsockname(), print)
    packet = _packet(5, 4800, 7, b"over udp")
    core.forward(packet, 12, len(packet), 5, 4800, 7, 0.0)
    assert sessions.receiver.unprotect(inbox.recv(2048)).endswith(b"over udp")
    assert len(sessions.given) == 1 and core.packets == 5
    inbox.close()


def test_a_failing_session_for_raises_to_the_caller_and_a_bad_answer_is_refused() -> None:
    sink = _fastsend.Sink(Capture())

    def broken(downtrack: Any) -> tuple[int, object] | None:
        raise RuntimeError("no keys here")

    sink.set_sessions(broken, Capture())
    core = _core(_fastsend.DownTrackCore, sink)
    packet = _packet(1, 960, 7, b"x")
    with pytest.raises(RuntimeError):
        core.forward(packet, 12, len(packet), 1, 960, 7, 0.0)
    sink.set_sessions(lambda downtrack: (0, None), Capture())
    with pytest.raises(ValueError):
        core.forward(packet, 12, len(packet), 2, 1920, 7, 0.0)
    with pytest.raises(TypeError):
        sink.set_sessions(None, Capture())
    assert not core.own_session and core.packets == 0
