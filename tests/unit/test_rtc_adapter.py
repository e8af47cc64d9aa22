"""The WebRTC adapter: our ICE-lite + aiortc DTLS/SCTP against an aiortc client, in memory."""

from __future__ import annotations

import asyncio
import gc
import struct
from collections.abc import AsyncIterator
from importlib import metadata

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from pylibsrtp import SRTP_MAX_TRAILER_LEN, Policy, Session
from pylibsrtp._binding import ffi as srtp_ffi
from pylibsrtp._binding import lib as srtp_lib

from sfu import fanout
from sfu.endpoint import Endpoint, Endpoints
from sfu.rtc_adapter import ConnectionState, DataChannel, PeerConnection, host_addresses
from sfu.srtp import FANOUT_CONFIGURED, SrtpProtector, SrtpVerifier
from tests.fakes import dtls_pair, fingerprints


def test_pinned_versions() -> None:
    # The adapter drives RTCDtlsTransport through its private ICE-transport interface.
    assert metadata.version("aiortc") == "1.16.0"
    assert metadata.version("aioice") == "0.13.0"
    # ... and hands libsrtp 2's srtp_protect, found through pylibsrtp's cffi module, to the C
    # fan-out; another prototype would leave forwarding in Python, at twice the CPU.
    assert metadata.version("pylibsrtp") == "1.0.0"
    assert FANOUT_CONFIGURED == fanout.ACCELERATED


def test_host_addresses() -> None:
    assert host_addresses("10.1.2.3", add_loopback=True) == ["10.1.2.3"]
    assert "127.0.0.1" in host_addresses("", add_loopback=True)
    assert "127.0.0.1" not in host_addresses("", add_loopback=False)


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    endpoints = Endpoints(
        ("127.0.0.1",),
        udp_port=0,
        port_range=(42000, 42999),
        tcp_port=0,
        enabled_codecs=("audio/opus",),
    )
    await endpoints.start()
    endpoint = await endpoints.acquire()
    yield endpoint
    endpoint.release()
    await endpoints.stop()


def _client(monkeypatch: pytest.MonkeyPatch) -> RTCPeerConnection:
    # aioice never gathers 127.0.0.1; the test client must, to reach our loopback socket.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda **_: ["127.0.0.1"])
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def test_server_offer_connects_and_queues_reliable_data(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = PeerConnection("subscriber", endpoint)
    client = _client(monkeypatch)
    states: list[ConnectionState] = []
    server.on_state_change = states.append
    reliable = server.create_data_channel("_reliable", reliable=True)
    lossy = server.create_data_channel("_lossy", reliable=False)
    # Sent before anything is connected: reliable waits, lossy is dropped.
    assert reliable.send(b"early")
    assert not lossy.send(b"dropped")
    channels: asyncio.Queue[RTCDataChannel] = asyncio.Queue()
    client.on("datachannel", channels.put_nowait)
    try:
        offer = await server.create_offer()
        assert "a=ice-lite" in offer and f"127.0.0.1 {endpoint.udp_port} typ host" in offer
        await client.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await client.setLocalDescription(await client.createAnswer())
        await server.set_answer(client.localDescription.sdp)
        received: asyncio.Queue[bytes] = asyncio.Queue()
        channel = await asyncio.wait_for(channels.get(), 10)
        while channel.label != "_reliable":  # the lossy channel may open first
            channel = await asyncio.wait_for(channels.get(), 10)
        channel.on("message", received.put_nowait)
        assert await asyncio.wait_for(received.get(), 10) == b"early"
        assert reliable.send(b"later")
        assert await asyncio.wait_for(received.get(), 10) == b"later"
        assert states[-1] is ConnectionState.CONNECTED
        sessions = server.srtp_sessions()
        assert sessions is not None
        rtp = bytes([0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 42]) + b"payload"
        protected = sessions[1].protect(rtp)
        # The header stays clear; the payload is encrypted and an auth tag appended (16 bytes
        # with AEAD_AES_128_GCM, which libwebrtc and aiortc both prefer, 10 with CM80).
        assert protected[:12] == rtp[:12]
        assert len(protected) - len(rtp) in (10, 16)
        # The first RTP a downtrack sends switches the C fan-out on (the UDP path is selected
        # and the transmit keys exist), and gives the downtrack its own libsrtp session.
        assert not server.rtp_sink.fast
        core = fanout.DownTrackCore(server.rtp_sink, 42, 90000, 1, 0, b"", {}, -1)
        core.forward(rtp, 12, len(rtp), 1, 0, 42, 0.0)
        assert core.packets == 1
        assert server.rtp_sink.fast is fanout.ACCELERATED
        assert getattr(core, "own_session", False) is fanout.ACCELERATED
        assert server.send_rtp(rtp), "the transport's own Python path still works"
    finally:
        await server.close()
        await client.close()
    assert not server.rtp_sink.fast, "a closed transport leaves the fan-out's fast path"
    assert endpoint.registry.session_count == 0


async def test_client_offer_answered(endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    server = PeerConnection("publisher", endpoint)
    client = _client(monkeypatch)
    opened: asyncio.Queue[DataChannel] = asyncio.Queue()
    server.on_data_channel = opened.put_nowait
    channel = client.createDataChannel("_reliable")
    try:
        await client.setLocalDescription(await client.createOffer())
        answer = await server.answer(client.localDescription.sdp)
        assert "a=setup:passive" in answer
        await client.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        remote = await asyncio.wait_for(opened.get(), 10)
        got: asyncio.Queue[bytes] = asyncio.Queue()
        remote.on_message = got.put_nowait
        channel.send(b"upstream")
        assert await asyncio.wait_for(got.get(), 10) == b"upstream"
    finally:
        await server.close()
        await client.close()


async def test_data_section_in_a_later_offer_starts_sctp(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Browsers publish their microphone first and add the m=application section of their data
    # channels in a renegotiation, after DTLS has connected.
    server = PeerConnection("publisher", endpoint)
    client = _client(monkeypatch)
    states: list[ConnectionState] = []
    server.on_state_change = states.append
    opened: asyncio.Queue[DataChannel] = asyncio.Queue()
    server.on_data_channel = opened.put_nowait
    client.addTransceiver("audio", direction="sendonly")
    try:
        await client.setLocalDescription(await client.createOffer())
        assert "m=application" not in client.localDescription.sdp
        answer = await server.answer(client.localDescription.sdp)
        await client.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        for _ in range(100):
            if ConnectionState.CONNECTED in states:
                break
            await asyncio.sleep(0.05)
        assert ConnectionState.CONNECTED in states
        channel = client.createDataChannel("_reliable")
        await client.setLocalDescription(await client.createOffer())
        assert "m=application" in client.localDescription.sdp
        answer = await server.answer(client.localDescription.sdp)
        assert "m=application 9" in answer
        await client.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        remote = await asyncio.wait_for(opened.get(), 10)
        got: asyncio.Queue[bytes] = asyncio.Queue()
        remote.on_message = got.put_nowait
        channel.send(b"after renegotiation")
        assert await asyncio.wait_for(got.get(), 10) == b"after renegotiation"
    finally:
        await server.close()
        await client.close()


async def test_bad_sdp_and_candidates_are_value_errors(endpoint: Endpoint) -> None:
    pc = PeerConnection("publisher", endpoint)
    try:
        with pytest.raises(ValueError):
            await pc.answer("this is not sdp")
        with pytest.raises(ValueError):
            await pc.answer("v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n")
        with pytest.raises(ValueError):
            await pc.add_candidate({"candidate": "candidate:garbage", "sdpMid": "0"})
        with pytest.raises(ValueError):
            await pc.add_candidate({"candidate": 42})
        # End of candidates and TCP candidates are fine: ICE-lite learns addresses from checks.
        await pc.add_candidate({"candidate": "", "sdpMid": "0"})
        tcp = "candidate:1 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active"
        await pc.add_candidate({"candidate": tcp, "sdpMid": "0", "sdpMLineIndex": 0})
    finally:
        await pc.close()


def _srtp(direction: int) -> Session:
    policy = Policy(key=bytes(range(30)), ssrc_type=direction)
    return Session(policy)


def test_srtp_protector_matches_libsrtp_and_owns_its_session() -> None:
    # The session is referenced only by the protector: it must keep libsrtp's context alive.
    protector = SrtpProtector(_srtp(Policy.SSRC_ANY_OUTBOUND))
    gc.collect()
    receiver = _srtp(Policy.SSRC_ANY_INBOUND)
    for seq in range(3):
        rtp = bytes([0x80, 111, 0, seq, 0, 0, 0, seq, 0, 0, 0, 7]) + b"payload"
        protected = protector.protect(memoryview(rtp))
        assert protected is not None and protected != rtp
        assert receiver.unprotect(protected) == rtp
    assert protector.protect(b"\x80" * 1500) is None, "too long for libsrtp's buffer"


def test_srtp_verifier_reads_what_libsrtp_protected_and_refuses_the_rest() -> None:
    sender = _srtp(Policy.SSRC_ANY_OUTBOUND)
    verifier = SrtpVerifier(_srtp(Policy.SSRC_ANY_INBOUND))
    gc.collect()  # the verifier alone holds its session
    rtp = struct.pack("!BBHII", 0x80, 111, 7, 960, 42) + b"payload"
    protected = sender.protect(rtp)
    assert verifier.unprotect(protected) == rtp
    assert verifier.unprotect(protected) is None, "a replay"
    forged = sender.protect(struct.pack("!BBHII", 0x80, 111, 8, 960, 42) + b"payload")
    assert verifier.unprotect(forged[:-1] + bytes([forged[-1] ^ 1])) is None, "a forgery"
    assert verifier.unprotect(b"\x80" * 1501) is None, "too long for libsrtp's buffer"
    report = struct.pack("!BBHI", 0x80, 201, 1, 42) + bytes(4)
    assert verifier.unprotect_rtcp(sender.protect_rtcp(report)) == report
    assert verifier.unprotect_rtcp(report) is None, "not protected"


async def test_dtls_sessions_in_memory_agree_on_srtp_keys() -> None:
    """The glue the server and the load tester share, without sockets: a handshake between an
    in-memory pair gives each side SRTP sessions that decrypt the other's packets."""
    client, server = dtls_pair()
    client.set_role(client=True)
    server.set_role(client=False)
    connected = await asyncio.wait_for(
        asyncio.gather(client.start(fingerprints(server)), server.start(fingerprints(client))),
        10,
    )
    assert list(connected) == [True, True]
    client_keys, server_keys = client.srtp_sessions(), server.srtp_sessions()
    assert client_keys is not None and server_keys is not None
    packet = struct.pack("!BBHII", 0x80, 111, 1, 960, 42) + b"opus frame"
    assert server_keys[0].unprotect(client_keys[1].protect(packet)) == packet
    # A downtrack's own transmit session has the same keys: the other side reads it too.
    assert server.outbound_session() is not None
    gc.collect()
    for side, other, ssrc in ((server, client_keys[0], 43), (client, server_keys[0], 44)):
        session = side.outbound_session()
        assert session is not None
        address, owner = session
        packet = struct.pack("!BBHII", 0x80, 111, 1, 960, ssrc) + b"opus frame"
        protected = srtp_ffi.new("char[]", len(packet) + SRTP_MAX_TRAILER_LEN)
        protected[0 : len(packet)] = packet
        length = srtp_ffi.new("int *", len(packet))
        context = srtp_ffi.cast("srtp_t", address)
        assert srtp_lib.srtp_protect(context, protected, length) == 0
        assert other.unprotect(bytes(srtp_ffi.buffer(protected, length[0]))) == packet
        del owner
    await client.stop()
    await server.stop()
