"""ICE-lite without sockets: binding requests, integrity, nomination, consent, TCP framing."""

from __future__ import annotations

import logging
import secrets
import struct

import pytest
from aioice import stun

from sfu.endpoint import media_bind_address
from sfu.ice import (
    CONSENT_TIMEOUT_S,
    MALFORMED,
    IceRegistry,
    IceState,
    TcpIceConnection,
    UdpMux,
)
from tests.e2e.raw import binding_request


class RecordingPath:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.attached: list[object] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def attach(self, session: object) -> None:
        self.attached.append(session)

    def detach(self, session: object) -> None:
        self.attached.remove(session)

    def udp_destination(self) -> None:
        return None


def _request(ufrag: str, pwd: str, *, nominate: bool = False) -> bytes:
    return binding_request(ufrag, pwd, nominate=nominate)


def test_binding_request_answered_and_path_selected() -> None:
    registry = IceRegistry()
    session = registry.create_session("sub")
    path = RecordingPath()
    request = _request(session.local_ufrag, session.local_pwd)
    raw = registry.handle_stun(request, ("10.0.0.1", 5000), path)
    assert raw is not None
    response = stun.parse_message(raw)
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == stun.parse_message(request).transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == ("10.0.0.1", 5000)
    assert response.check_message_integrity(session.local_pwd.encode())
    assert session.state is IceState.CONNECTED
    assert session.selected is path and path.attached == [session]


def test_nomination_moves_to_the_nominated_path() -> None:
    registry = IceRegistry()
    session = registry.create_session("pub")
    first, second = RecordingPath(), RecordingPath()
    registry.handle_stun(_request(session.local_ufrag, session.local_pwd), ("10.0.0.1", 1), first)
    registry.handle_stun(
        _request(session.local_ufrag, session.local_pwd, nominate=True), ("10.0.0.2", 2), second
    )
    assert session.selected is second
    assert first.attached == [] and second.attached == [session]
    session.send(b"\x17dtls")
    assert second.sent == [b"\x17dtls"]


def test_unknown_ufrag_bad_integrity_and_garbage_are_dropped() -> None:
    registry = IceRegistry()
    session = registry.create_session("s")
    path = RecordingPath()
    assert registry.handle_stun(_request("nobody", "x" * 24), ("10.0.0.1", 1), path) is None
    wrong = _request(session.local_ufrag, "not-the-password-at-all!")
    assert registry.handle_stun(wrong, ("10.0.0.1", 1), path) is None
    assert registry.handle_stun(b"\x00\x01garbage", ("10.0.0.1", 1), path) is None
    assert session.state is IceState.NEW and session.selected is None


def test_consent_expiry_fails_the_session() -> None:
    registry = IceRegistry()
    session = registry.create_session("s")
    states: list[IceState] = []
    session.on_state_change = states.append
    registry.handle_stun(
        _request(session.local_ufrag, session.local_pwd), ("10.0.0.1", 1), RecordingPath()
    )
    checked_at = session.last_consent
    registry.expire_consent(checked_at + CONSENT_TIMEOUT_S - 1)
    assert session.state is IceState.CONNECTED
    registry.expire_consent(checked_at + CONSENT_TIMEOUT_S + 1)
    assert states == [IceState.CONNECTED, IceState.FAILED]
    session.close()
    assert registry.session_count == 0


def test_tcp_framing_across_reads() -> None:
    registry = IceRegistry()
    session = registry.create_session("tcp")
    received: list[bytes] = []
    session.on_datagram = received.append
    connection = TcpIceConnection(registry)
    request = _request(session.local_ufrag, session.local_pwd, nominate=True)
    stream = struct.pack("!H", len(request)) + request
    stream += struct.pack("!H", 5) + b"\x16dtls" + struct.pack("!H", 3) + b"\x80rt"
    for index in range(0, len(stream), 7):  # arbitrary TCP segmentation
        connection.data_received(stream[index : index + 7])
    assert session.selected is connection
    assert received == [b"\x16dtls", b"\x80rt"]


def test_malformed_stun_is_counted_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A 28-byte binding request whose CHANGE-REQUEST attribute is 2 bytes long, not 4: aioice's
    # parser raises struct.error (seen logging a traceback per packet, issue 14).
    attribute = struct.pack("!HH", 0x0003, 2) + b"\x00\x00" + b"\x00\x00"
    header = struct.pack("!HHI", 0x0001, len(attribute), stun.COOKIE) + secrets.token_bytes(12)
    bad = header + attribute
    assert len(bad) == 28
    registry = IceRegistry()
    before = MALFORMED.counts.get("stun", 0)
    with caplog.at_level(logging.WARNING, logger="sfu.ice"):
        for _ in range(100):
            assert registry.handle_stun(bad, ("127.0.0.1", 9), RecordingPath()) is None
    assert MALFORMED.counts["stun"] == before + 100
    warnings = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) <= 1, "a flood of bad packets is not a flood of log lines"
    assert not [r for r in caplog.records if r.exc_info]
    # The same datagram framed on ICE-TCP (RFC 4571) is dropped the same way.
    connection = TcpIceConnection(registry)
    connection.data_received(struct.pack("!H", len(bad)) + bad)
    assert MALFORMED.counts["stun"] == before + 101


def test_media_sockets_follow_a_single_bind_address() -> None:
    assert media_bind_address(("127.0.0.1",)) == "127.0.0.1"
    assert media_bind_address(()) == "0.0.0.0"
    assert media_bind_address(("10.0.0.1", "127.0.0.1")) == "0.0.0.0"
    assert media_bind_address(("::1",)) == "0.0.0.0"


def test_ice_restart_moves_to_new_credentials_and_path() -> None:
    registry = IceRegistry()
    session = registry.create_session("sub")
    old_ufrag, old_pwd = session.local_ufrag, session.local_pwd
    before, after = RecordingPath(), RecordingPath()
    registry.handle_stun(_request(old_ufrag, old_pwd, nominate=True), ("10.0.0.1", 1), before)
    session.restart()
    assert (session.local_ufrag, session.local_pwd) != (old_ufrag, old_pwd)
    # Until the client has the new offer, its checks with the old credentials still count.
    assert registry.handle_stun(_request(old_ufrag, old_pwd), ("10.0.0.1", 1), before)
    assert session.selected is before
    # From another address with the new ones: the path moves, the old credentials go.
    new = _request(session.local_ufrag, session.local_pwd, nominate=True)
    assert registry.handle_stun(new, ("10.0.0.9", 7), after) is not None
    assert session.selected is after and session.state is IceState.CONNECTED
    assert registry.handle_stun(_request(old_ufrag, old_pwd), ("10.0.0.1", 1), before) is None
    session.close()
    assert registry.session_count == 0
    assert registry.handle_stun(new, ("10.0.0.9", 7), after) is None


def test_udp_paths_are_kept_only_while_selected() -> None:
    """A long-running node sees a new client address per peer connection: the mux keeps the
    selected paths only, and forgets them with their session."""
    registry = IceRegistry()
    mux = UdpMux(registry, batch=False)
    session = registry.create_session("pub")
    ufrag, pwd = session.local_ufrag, session.local_pwd
    mux.datagram_received(_request(ufrag, pwd), ("10.0.0.1", 1))
    mux.datagram_received(_request(ufrag, pwd), ("10.0.0.2", 2))  # another pair, not chosen
    assert set(mux.paths) == {("10.0.0.1", 1)}
    selected = mux.paths[("10.0.0.1", 1)]
    mux.datagram_received(_request(ufrag, pwd, nominate=True), ("10.0.0.1", 1))
    assert session.selected is selected, "a check from the selected address finds its path"
    mux.datagram_received(_request(ufrag, pwd, nominate=True), ("10.0.0.2", 2))
    assert set(mux.paths) == set(mux.routes) == {("10.0.0.2", 2)}
    session.close()
    assert not mux.paths and not mux.routes
