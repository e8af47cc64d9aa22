"""The only module that touches aiortc and aioice internals.

Everything above it sees :class:`PeerConnection` and :class:`DataChannel`, which speak SDP
strings, candidate dictionaries and bytes. Underneath: our own ICE-lite sessions on the node's
UDP socket (``sfu/ice.py``), and aiortc's DTLS and SCTP driven through the ICE-transport
interface ``RTCDtlsTransport`` expects. The media path will take SRTP from the same sessions.

aiortc internals used here (pinned in pyproject, checked by ``tests/unit/test_rtc_adapter.py``):

- ``RTCDtlsTransport`` reads its ICE transport's ``role``, ``_recv()`` and ``_send()``;
- ``RTCDtlsTransport._set_role`` chooses the DTLS role from the SDP ``a=setup``;
- ``RTCDtlsTransport._rx_srtp`` / ``_tx_srtp`` are the SRTP sessions keyed by the handshake;
  ``_ssl``, ``_srtp_profiles`` and ``_role`` give the keys again, for a transmit session per
  downtrack (:func:`_transmit_policy`);
- pylibsrtp's internals are used by ``sfu/srtp.py`` alone (direct libsrtp calls on the
  media path);
- ``aioice.ice.get_host_addresses`` lists this host's addresses for our host candidates.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import aioice.ice
import pylibsrtp
from aiortc import (
    RTCCertificate,
    RTCDataChannel,
    RTCDataChannelParameters,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
    RTCSctpCapabilities,
    RTCSctpTransport,
)
from pylibsrtp import Session

from protocol import sdp, sdp_media
from protocol.rtp import is_rtcp
from sfu.endpoint import Endpoint
from sfu.fanout import Sink, count_protect_failure
from sfu.ice import IceState
from sfu.srtp import SrtpProtector, SrtpVerifier, transmit_context
from sfu.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

#: Reliable messages kept for a channel that is not open yet; beyond this the peer is too slow.
MAX_PENDING_MESSAGES = 1024
#: Test hook (LKPY_TEST_DROP_EVERY=N): drop every Nth RTP packet arriving from a publisher and
#: every Nth leaving for a subscriber, so end-to-end tests can show NACK/RTX recovery.
DROP_EVERY = int(os.environ.get("LKPY_TEST_DROP_EVERY", "0") or 0)
#: The SCTP message size we accept (aiortc's own limit).
SCTP_MAX_MESSAGE_SIZE = 65536


def host_addresses(node_ip: str, *, add_loopback: bool) -> list[str]:
    """The addresses our host candidates advertise: ``rtc.node_ip``, else this host's
    interfaces (aioice's discovery, which skips 127.0.0.1) plus 127.0.0.1 when ``add_loopback``
    (LiveKit's ``rtc.enable_loopback_candidate``, on in dev mode)."""
    if node_ip:
        return [node_ip]
    found = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
    if add_loopback and "127.0.0.1" not in found:
        found.append("127.0.0.1")
    return found


class ConnectionState(enum.Enum):
    """What the layers above need to know about a peer connection."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    PEER_CLOSED = "peer_closed"
    """The client closed it (DTLS close_notify)."""
    CLOSED = "closed"


class DataChannel:
    """A data channel that queues reliable messages until it opens.

    A participant may be sent reliable data the moment its ``connect()`` returns, before SCTP
    has opened the channel on our side; reliable means not lost, so those wait here.
    Unreliable (lossy) messages sent before the channel opens are dropped, as a lossy channel
    would drop them anyway.
    """

    def __init__(self, channel: RTCDataChannel, *, reliable: bool) -> None:
        self.label: str = channel.label
        self.reliable = reliable
        self._channel = channel
        self._pending: deque[bytes] = deque()
        self.on_message: Callable[[bytes], None] | None = None
        channel.on("open", self._flush)
        channel.on("message", self._on_message)

    @property
    def is_open(self) -> bool:
        return bool(self._channel.readyState == "open")

    def send(self, payload: bytes) -> bool:
        """Send or queue ``payload``; returns False when it was dropped."""
        if self.is_open and not self._pending:
            self._channel.send(payload)
            return True
        if not self.reliable or self._channel.readyState in ("closing", "closed"):
            return False
        if len(self._pending) >= MAX_PENDING_MESSAGES:
            logger.warning("data channel %s: pending queue full, dropping", self.label)
            return False
        self._pending.append(payload)
        return True

    def _flush(self) -> None:
        while self._pending and self.is_open:
            self._channel.send(self._pending.popleft())

    def _on_message(self, message: bytes | str) -> None:
        if self.on_message is None:
            return
        self.on_message(message.encode() if isinstance(message, str) else message)


class _IceTransportShim:
    """What ``RTCDtlsTransport`` needs of an ICE transport: a ``role``, ``_recv()`` and
    ``_send()``, over one of our ICE paths (the server's ICE-lite session or the load tester's
    agent). ``role`` only matters to aiortc when the DTLS role is "auto"; we always set it from
    the SDP.

    :param send: sends one datagram on the selected path.
    """

    def __init__(self, send: Callable[[bytes], None], role: str) -> None:
        self.role = role
        self._send_datagram = send
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        """DTLS records from the network, for aiortc's handshake and SCTP."""

    async def _recv(self) -> bytes:
        return await self.queue.get()

    async def _send(self, data: bytes) -> None:
        self._send_datagram(data)


def _dtls_parameters(fingerprints: Iterable[tuple[str, str]]) -> RTCDtlsParameters:
    """The remote DTLS parameters from (algorithm, value) pairs of its SDP."""
    return RTCDtlsParameters(
        fingerprints=[RTCDtlsFingerprint(algorithm=a, value=v) for a, v in fingerprints if v]
    )


def _transmit_policy(transport: RTCDtlsTransport) -> pylibsrtp.Policy:
    """The transmit SRTP policy of a connected transport, derived as aiortc's
    ``_setup_srtp`` derives it (RFC 5764 4.2), with libsrtp's smallest replay window: a
    sender never checks it, and a 1,024-packet one costs a 128-byte shift per packet."""
    connection = transport._ssl
    assert connection is not None, "a connected transport has its TLS connection"
    selected = connection.get_selected_srtp_profile()
    profile = next(p for p in transport._srtp_profiles if p.openssl_profile == selected)
    material = connection.export_keying_material(
        b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length)
    )
    key = profile.get_key_and_salt(material, 1 if transport._role == "server" else 0)
    policy = pylibsrtp.Policy(
        key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile.libsrtp_profile
    )
    policy.allow_repeat_tx = True
    policy.window_size = 64
    return policy


class DtlsSession:
    """aiortc's DTLS over one of our ICE paths, and the SRTP keys it derives (RFC 5764): the
    glue the server's peer connections and the load tester's share.

    :param send: sends one datagram on the selected ICE path.
    :param controlling: our ICE role (the ICE-lite server is controlled, RFC 8445 2.5).
    """

    def __init__(
        self,
        send: Callable[[bytes], None],
        certificate: RTCCertificate,
        *,
        controlling: bool,
    ) -> None:
        self._shim = _IceTransportShim(send, "controlling" if controlling else "controlled")
        shim: Any = self._shim  # duck-typed RTCIceTransport
        self.transport = RTCDtlsTransport(shim, [certificate])
        """For an RTCSctpTransport on top, and its ``statechange`` events."""
        self._tx_policy: pylibsrtp.Policy | None = None

    @property
    def state(self) -> str:
        return str(self.transport.state)

    def feed(self, datagram: bytes) -> None:
        """A DTLS record from the network (RFC 7983: first byte 20-63)."""
        self._shim.queue.put_nowait(datagram)

    def set_role(self, *, client: bool) -> None:
        """The DTLS role, from the SDP's ``a=setup`` (aiortc would otherwise guess it)."""
        self.transport._set_role("client" if client else "server")

    async def start(self, fingerprints: Iterable[tuple[str, str]]) -> bool:
        """Run the handshake against the remote (algorithm, value) fingerprints; True when it
        connected."""
        await self.transport.start(_dtls_parameters(fingerprints))
        return self.state == "connected"

    def srtp_sessions(self) -> tuple[Session, Session] | None:
        """The (receive, transmit) libsrtp sessions keyed by the handshake; None before."""
        rx, tx = self.transport._rx_srtp, self.transport._tx_srtp
        if rx is None or tx is None:
            return None
        return rx, tx

    def outbound_session(self) -> tuple[int, object] | None:
        """A new transmit libsrtp session on the handshake's keys, as (context address, owner
        that frees it): one per downtrack, because libsrtp finds a session's stream by walking
        a list of every SSRC it protected. None before the handshake."""
        if self.transport._tx_srtp is None:
            return None
        if self._tx_policy is None:
            self._tx_policy = _transmit_policy(self.transport)
        return transmit_context(self._tx_policy)

    async def stop(self) -> None:
        await self.transport.stop()


class PeerConnection:
    """One WebRTC transport (one BUNDLE group): ICE-lite, DTLS, SCTP data channels.

    :param name: ``publisher`` or ``subscriber``, for logs.
    :param endpoint: the node's UDP socket and candidates.
    """

    def __init__(self, name: str, endpoint: Endpoint) -> None:
        self.name = name
        self._endpoint = endpoint
        self._ice = endpoint.registry.create_session(name)
        self._certificate = RTCCertificate.generateCertificate()
        self._dtls = DtlsSession(self._ice.send, self._certificate, controlling=False)
        self._ice.on_datagram = self._on_datagram
        self._sctp = RTCSctpTransport(self._dtls.transport)
        self._session_id = secrets.randbelow(2**62)
        self._version = 1
        self._connect_task: asyncio.Task[None] | None = None
        self._sctp_task: asyncio.Task[None] | None = None
        self._sctp_port: int | None = None
        """The remote SCTP port, from the first description with an m=application section."""
        self._sctp_started = False
        self._rtp_count = 0
        self._protector: SrtpProtector | None = None
        self._verifier: SrtpVerifier | None = None
        self.rtp_sink = Sink(self.send_rtp)
        """Where downtracks send: this Python path until SRTP keys and a UDP path exist, then
        protected and sent by the C fan-out (``sfu/fanout.py``), each downtrack with its own
        libsrtp session once there are keys."""
        self.rtp_sink.set_sessions(self._downtrack_session, self._send_protected)
        self._bundle_tag: tuple[str, int] = ("0", 0)
        self.tcp_only = False
        """Offer ICE-TCP candidates only (the participant's ICE preference)."""
        self.state = ConnectionState.NEW
        self.on_state_change: Callable[[ConnectionState], None] | None = None
        self.on_data_channel: Callable[[DataChannel], None] | None = None
        self.on_rtp: Callable[[bytes], None] | None = None
        self.on_rtcp: Callable[[bytes], None] | None = None
        self._ice.on_state_change = self._on_ice_state
        self._ice.on_path_change = self._refresh_sink
        self._dtls.transport.on("statechange", self._on_dtls_state)
        self._sctp.on("datachannel", self._on_remote_channel)

    def _set_state(self, state: ConnectionState) -> None:
        if state is self.state or self.state is ConnectionState.CLOSED:
            return
        logger.debug("%s pc: %s -> %s", self.name, self.state.value, state.value)
        self.state = state
        if self.on_state_change is not None:
            self.on_state_change(state)

    def _transport_params(self, setup: str) -> sdp.TransportParams:
        return sdp.TransportParams(
            ice_ufrag=self._ice.local_ufrag,
            ice_pwd=self._ice.local_pwd,
            fingerprints=tuple((f.algorithm, f.value) for f in self._certificate.getFingerprints()),
            candidates=self._endpoint.candidates(tcp_only=self.tcp_only),
            setup=setup,
        )

    def restart_ice(self) -> None:
        """New ICE credentials for the next offer (an ICE restart, RFC 8445 9): the client
        checks again, possibly from another address; DTLS and SRTP carry on."""
        self._ice.restart()

    def create_data_channel(self, label: str, *, reliable: bool) -> DataChannel:
        """Create a channel the way LiveKit does: ``_reliable`` ordered, ``_lossy`` unordered
        with no retransmissions. It opens once SCTP connects."""
        parameters = RTCDataChannelParameters(
            label=label, ordered=reliable, maxRetransmits=None if reliable else 0
        )
        return DataChannel(RTCDataChannel(self._sctp, parameters), reliable=reliable)

    async def create_offer(self, tracks: Sequence[sdp_media.OutgoingTrack] = ()) -> str:
        self._version += 1
        address = self._endpoint.addresses[0] if self._endpoint.addresses else "0.0.0.0"
        text = sdp_media.subscriber_offer(
            tracks,
            self._transport_params("actpass"),
            session_id=self._session_id,
            version=self._version,
            address=address,
        )
        return self._remember_bundle_tag(text)

    async def set_answer(self, text: str) -> None:
        """Apply the client's answer to our offer; ValueError when it does not fit."""
        self._start(_parse(text), offered=False)

    async def answer(
        self,
        offer_text: str,
        preferred: Mapping[str, Sequence[str]] | None = None,
        outgoing: Mapping[str, sdp_media.OutgoingTrack] | None = None,
    ) -> str:
        """Answer a client's offer; ValueError when it cannot be applied. ``preferred``: the
        codecs to answer first, by msid track id; ``outgoing``: the tracks we send, by the mid
        of the client's receive-only section (``sdp_media.answer``)."""
        offer = _parse(offer_text)
        self._start(offer, offered=True)
        address = self._endpoint.addresses[0] if self._endpoint.addresses else "0.0.0.0"
        text = sdp_media.answer(
            offer,
            self._transport_params("passive"),
            self._endpoint.enabled_codecs,
            session_id=self._session_id,
            address=address,
            preferred=preferred,
            outgoing=outgoing,
        )
        return self._remember_bundle_tag(text)

    def _remember_bundle_tag(self, text: str) -> str:
        self._bundle_tag = sdp.bundle_tag(sdp.parse(text)) or self._bundle_tag
        return text

    def _start(self, remote: sdp.SessionDescription, *, offered: bool) -> None:
        """Start DTLS once, with the remote fingerprint and roles from its SDP, and SCTP once
        the first ``m=application`` section appears, in this description or a later one."""
        transport = sdp.remote_transport(remote)
        if transport is None:
            return
        self._want_sctp(_sctp_port(remote))
        if self._connect_task is not None:
            return
        _ufrag, _pwd, fingerprints, setup = transport
        # We answer "passive" to a client's "actpass" and offer "actpass": the client is then
        # the DTLS client (RFC 8842), unless its answer says "passive".
        self._dtls.set_role(client=not offered and setup == "passive")
        parsed = [f.split(" ", 1) for f in fingerprints]
        remote_fingerprints = [(pair[0], pair[1]) for pair in parsed if len(pair) == 2]
        self._connect_task = asyncio.get_running_loop().create_task(
            self._connect(remote_fingerprints), name=f"{self.name}-connect"
        )

    def _want_sctp(self, port: int | None) -> None:
        """Remember the remote SCTP port the first time a description has data channels.
        Browsers add their ``m=application`` section in a renegotiation after the first
        offer (livekit-client creates its data channels once the publisher PC exists), so
        SCTP may have to start long after DTLS connected."""
        if port is None or self._sctp_port is not None:
            return
        self._sctp_port = port
        if self._dtls.state == "connected":
            self._sctp_task = asyncio.get_running_loop().create_task(
                self._start_sctp(), name=f"{self.name}-sctp"
            )

    async def _connect(self, fingerprints: list[tuple[str, str]]) -> None:
        if await self._dtls.start(fingerprints) and self._sctp_port is not None:
            await self._start_sctp()

    async def _start_sctp(self) -> None:
        if self._sctp_started or self._sctp_port is None:
            return
        self._sctp_started = True
        await self._sctp.start(RTCSctpCapabilities(SCTP_MAX_MESSAGE_SIZE), self._sctp_port)

    async def add_candidate(self, init: dict[str, Any]) -> None:
        """A trickled RTCIceCandidateInit. An ICE-lite server learns client addresses from
        their checks, so candidates are only validated (ValueError for garbage)."""
        text = init.get("candidate") or ""
        if not isinstance(text, str):
            raise ValueError("candidate is not a string")
        if text and len(text.removeprefix("candidate:").split()) < 8:
            raise ValueError(f"unparseable candidate {text[:60]!r}")

    def local_candidates(self) -> list[dict[str, Any]]:
        """Our candidates as RTCIceCandidateInit dictionaries (all three keys: the Rust SDK
        unwraps them), for the first BUNDLEd section."""
        mid, index = self._bundle_tag
        return [
            {"candidate": c, "sdpMid": mid, "sdpMLineIndex": index}
            for c in self._endpoint.candidates(tcp_only=self.tcp_only)
        ]

    def _on_datagram(self, data: bytes) -> None:
        first = data[0]
        if 127 < first < 192:  # RFC 7983: SRTP and SRTCP go straight to the media path
            self._on_media(data)
        elif 19 < first < 64:  # DTLS, through aiortc's handshake and SCTP
            self._dtls.feed(data)

    def _on_media(self, data: bytes) -> None:
        verifier = self._verifier
        if verifier is None:
            sessions = self.srtp_sessions()
            if sessions is None:
                return
            verifier = self._verifier = SrtpVerifier(sessions[0])
        # A replayed or forged packet is None: RFC 3711 says drop it silently.
        if is_rtcp(data):
            if self.on_rtcp is not None and (report := verifier.unprotect_rtcp(data)) is not None:
                self.on_rtcp(report)
        elif self.on_rtp is not None:
            # A test drop happens before libsrtp sees the packet, as a network loss would
            # (its replay window would otherwise refuse the retransmission).
            if DROP_EVERY and self._dropped_for_test():
                return
            if (packet := verifier.unprotect(data)) is not None:
                self.on_rtp(packet)

    def send_rtp(self, packet: bytes | memoryview) -> bool:
        """Protect and send one RTP packet on the selected path; False when it was dropped
        (not connected yet, or refused by libsrtp)."""
        protector = self._protector or self._keyed()
        if protector is None:
            return False
        protected = protector.protect(packet)
        if protected is None:
            count_protect_failure()
            return False
        if not (DROP_EVERY and self._dropped_for_test()):
            self._ice.send(protected)
        return True

    def _downtrack_session(self, downtrack: object) -> tuple[int, object] | None:
        return self._dtls.outbound_session()

    def _keyed(self) -> SrtpProtector | None:
        """The transport's protector, made on the first packet after the handshake, when the
        fast path can start too."""
        sessions = self.srtp_sessions()
        if sessions is None:
            return None
        self._protector = SrtpProtector(sessions[1])
        self._refresh_sink()
        return self._protector

    def _send_protected(self, datagram: memoryview) -> bool:
        """A packet a downtrack protected itself, on a path the C fan-out does not send on
        (yet: the first one after the handshake starts it)."""
        if self._protector is None:
            self._keyed()
        if not (DROP_EVERY and self._dropped_for_test()):
            self._ice.send(bytes(datagram))
        return True

    def _refresh_sink(self) -> None:
        """Let the C fan-out protect and send for this transport while it has SRTP keys and a
        connected UDP path (a TCP path, or the test drop hook, keeps the Python send)."""
        protector = self._protector
        path = self._ice.selected
        destination = path.udp_destination() if path is not None else None
        if (
            protector is None
            or destination is None
            or self._ice.state is not IceState.CONNECTED
            or DROP_EVERY
        ):
            self.rtp_sink.clear_fast()
            return
        fd, address, spill = destination
        self.rtp_sink.set_fast(protector.context_address, protector.session, fd, address, spill)

    def _dropped_for_test(self) -> bool:
        self._rtp_count += 1
        return self._rtp_count % DROP_EVERY == 0

    def send_rtcp(self, packet: bytes) -> None:
        sessions = self.srtp_sessions()
        if sessions is not None:
            self._ice.send(sessions[1].protect_rtcp(packet))

    def srtp_sessions(self) -> tuple[Session, Session] | None:
        """The (receive, transmit) libsrtp sessions keyed from the DTLS handshake (RFC 5764),
        for the media path; None until DTLS has connected."""
        return self._dtls.srtp_sessions()

    def forget_outgoing(self, *ssrcs: int) -> None:
        """SSRCs this transport no longer sends on (an ended subscription; 0 is skipped).
        libsrtp keeps a stream for every SSRC ever protected (272 bytes each) until the
        session ends: a subscriber that stays while publishers come and go would otherwise
        grow with every track it was sent."""
        sessions = self.srtp_sessions()
        if sessions is None:
            return
        for ssrc in ssrcs:
            if not ssrc:
                continue
            try:
                sessions[1].remove_stream(ssrc)
            except pylibsrtp.Error:
                continue  # nothing was ever sent with it

    async def close(self) -> None:
        self._set_state(ConnectionState.CLOSED)
        self.rtp_sink.clear_fast()
        for task in (self._connect_task, self._sctp_task):
            if task is not None:
                await cancel_and_wait(task)
        await self._sctp.stop()
        await self._dtls.stop()
        self._ice.close()

    def _on_ice_state(self, state: IceState) -> None:
        self._refresh_sink()
        if state is IceState.CONNECTED:
            self._set_state(ConnectionState.CONNECTING)
        elif state is IceState.FAILED:
            self._set_state(ConnectionState.FAILED)

    def _on_dtls_state(self) -> None:
        match self._dtls.state:
            case "connected":
                self._set_state(ConnectionState.CONNECTED)
            case "failed":
                self._set_state(ConnectionState.FAILED)
            case "closed":
                # The client closed its peer connection (DTLS close_notify, RFC 5246 7.2.1):
                # it is gone even if its leave never arrived, so a participant kept for a
                # resume does not linger until consent expires. Our own close is CLOSED first.
                self._set_state(ConnectionState.PEER_CLOSED)

    def _on_remote_channel(self, channel: RTCDataChannel) -> None:
        # LiveKit's clients open `_reliable` ordered and `_lossy`/`_data_track` unordered.
        wrapped = DataChannel(channel, reliable=bool(channel.ordered))
        if self.on_data_channel is not None:
            self.on_data_channel(wrapped)


def _parse(text: str) -> sdp.SessionDescription:
    description = sdp.parse(text)
    if sdp.remote_transport(description) is None and description.media:
        raise ValueError("SDP has no usable m= section")
    return description


def _sctp_port(description: sdp.SessionDescription) -> int | None:
    for section in description.media:
        if section.kind == "application" and not section.rejected:
            port = section.value("sctp-port")
            try:
                return int(port) if port else sdp.SCTP_PORT
            except ValueError:
                raise ValueError(f"bad a=sctp-port {port!r}") from None
    return None
