"""Stand-ins for the transports ``ParticipantTracks`` uses, so track and room unit tests need
no sockets, certificates or event loop."""

from __future__ import annotations

from collections.abc import Callable

from protocol.sdp_media import OutgoingTrack
from sfu.fanout import Sink


class FakePc:
    """What ParticipantTracks uses of a PeerConnection; records what it sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        """Every RTP packet sent, as the subscriber would receive it (before SRTP)."""
        self.rtp_sink = Sink(self.send_rtp)
        self.rtcp_sent: list[bytes] = []
        self.on_rtp: Callable[[bytes], None] | None = None
        self.on_rtcp: Callable[[bytes], None] | None = None

    def send_rtp(self, packet: memoryview) -> bool:
        self.sent.append(bytes(packet))  # the downtrack reuses its buffer
        return True

    def send_rtcp(self, packet: bytes) -> None:
        self.rtcp_sent.append(packet)


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
