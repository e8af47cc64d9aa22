"""Stand-ins for the transports ``ParticipantTracks`` uses, so track and room unit tests need
no sockets, certificates or event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from aiortc import RTCCertificate

from protocol.sdp_media import OutgoingTrack
from sfu.fanout import Sink
from sfu.rtc_adapter import ConnectionState, DataChannel, DtlsSession


class FakePc:
    """What ParticipantTracks uses of a PeerConnection; records what it sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        """Every RTP packet sent, as the subscriber would receive it (before SRTP)."""
        self.rtp_sink = Sink(self.send_rtp)
        self.rtcp_sent: list[bytes] = []
        self.forgotten: list[int] = []
        """SSRCs no longer sent on (``forget_outgoing``)."""
        self.on_rtp: Callable[[bytes], None] | None = None
        self.on_rtcp: Callable[[bytes], None] | None = None

    def send_rtp(self, packet: memoryview) -> bool:
        self.sent.append(bytes(packet))  # the downtrack reuses its buffer
        return True

    def send_rtcp(self, packet: bytes) -> None:
        self.rtcp_sent.append(packet)

    def forget_outgoing(self, *ssrcs: int) -> None:
        self.forgotten += [ssrc for ssrc in ssrcs if ssrc]


class FakeSubscriber:
    """What ParticipantTracks uses of a two-PC SubscriberTransport."""

    def __init__(self) -> None:
        self.pc = FakePc()
        self.tracks: list[OutgoingTrack] = []
        self.on_answer: Callable[[str], None] | None = None

    def next_mid(self) -> str:
        return str(len(self.tracks) + 1)

    def add_track(self, track: OutgoingTrack) -> None:
        self.tracks.append(track)

    def stop_track(self, track: OutgoingTrack) -> None:
        self.tracks.remove(track)


class FakeChannel:
    """A data channel that records what is sent on it."""

    def __init__(self, label: str, *, reliable: bool) -> None:
        self.label = label
        self.reliable = reliable
        self.sent: list[bytes] = []
        self.on_message: Callable[[bytes], None] | None = None

    def send(self, payload: bytes) -> bool:
        self.sent.append(payload)
        return True


class FakePeerConnection(FakePc):
    """A peer connection without sockets, certificates or ICE (``sfu/transport.py``
    ``RtcConnection``): offers carry an ICE ufrag that changes on restart, answers accept."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.tcp_only = False
        self.on_state_change: Callable[[ConnectionState], None] | None = None
        self.on_data_channel: Callable[[DataChannel], None] | None = None
        self.channels: list[FakeChannel] = []
        self.answers: list[str] = []
        self._ufrag = 0
        self.closed = False

    def create_data_channel(self, label: str, *, reliable: bool) -> DataChannel:
        channel = FakeChannel(label, reliable=reliable)
        self.channels.append(channel)
        return cast(DataChannel, channel)

    def _description(self, kind: str) -> str:
        return f"v=0\r\ns=-\r\na=ice-ufrag:fake{self._ufrag}\r\na=x-{kind}\r\n"

    async def create_offer(self, tracks: Sequence[OutgoingTrack] = ()) -> str:
        return self._description(f"offer-{len(tracks)}")

    async def set_answer(self, text: str) -> None:
        self.answers.append(text)

    async def answer(
        self,
        offer_text: str,
        preferred: Mapping[str, Sequence[str]] | None = None,
        outgoing: Mapping[str, OutgoingTrack] | None = None,
    ) -> str:
        return self._description("answer")

    def restart_ice(self) -> None:
        self._ufrag += 1

    async def add_candidate(self, init: dict[str, Any]) -> None:
        return None

    def local_candidates(self) -> list[dict[str, Any]]:
        return []

    async def close(self) -> None:
        self.closed = True


def dtls_pair() -> tuple[DtlsSession, DtlsSession]:
    """Two DTLS sessions wired to each other in memory (as aiortc's tests pair transports):
    what one sends, the other is fed, on the next loop iteration."""
    pending: dict[str, DtlsSession] = {}

    def deliver(to: str) -> Callable[[bytes], None]:
        def send(datagram: bytes) -> None:
            asyncio.get_running_loop().call_soon(pending[to].feed, datagram)

        return send

    client = DtlsSession(deliver("server"), RTCCertificate.generateCertificate(), controlling=True)
    server = DtlsSession(deliver("client"), RTCCertificate.generateCertificate(), controlling=False)
    pending.update(client=client, server=server)
    return client, server


def fingerprints(session: DtlsSession) -> list[tuple[str, str]]:
    return [(f.algorithm, f.value) for f in session.transport.getLocalParameters().fingerprints]
