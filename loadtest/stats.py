"""Counters, per-participant results and their merged summary.

:class:`StreamCounter` is on the receive path: packets and octets of every RTP packet, from
its clear header (SRTP encrypts only the payload, RFC 3711 section 3.1), and loss from its
sequence numbers, extended past wrap-arounds (RFC 3550 appendix A.1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class StreamCounter:
    """One received RTP stream (one SSRC)."""

    __slots__ = (
        "_reported_expected",
        "_reported_received",
        "base",
        "highest",
        "kind",
        "octets",
        "packets",
        "srtp_errors",
        "srtp_ok",
        "track_sid",
    )

    def __init__(self, sequence: int, kind: str, track_sid: str) -> None:
        self.kind = kind
        self.track_sid = track_sid
        self.base = sequence
        self.highest = sequence - 1
        """Extended highest sequence number (cycles << 16 | sequence)."""
        self.packets = 0
        self.octets = 0
        self.srtp_ok = 0
        self.srtp_errors = 0
        self._reported_expected = 0
        self._reported_received = 0

    def on_packet(self, sequence: int, size: int) -> int:
        """Count one packet; returns how many packets its sequence number skipped (a gap
        before it), 0 when in order or late."""
        self.packets += 1
        self.octets += size
        delta = (sequence - self.highest) & 0xFFFF
        if delta == 1:
            self.highest += 1
            return 0
        if delta < 0x8000:
            self.highest += delta
            return delta - 1
        return 0  # reordered or duplicated: counted, the highest stays

    @property
    def expected(self) -> int:
        return self.highest - self.base + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.packets)

    def report_interval(self) -> tuple[int, int]:
        """(fraction lost as 8-bit fixed point, cumulative lost) since the last report
        (RFC 3550 appendix A.3)."""
        expected = self.expected - self._reported_expected
        received = self.packets - self._reported_received
        self._reported_expected, self._reported_received = self.expected, self.packets
        lost = expected - received
        fraction = (lost << 8) // expected if expected > 0 and lost > 0 else 0
        return min(fraction, 255), self.expected - self.packets


@dataclass
class TrackResult:
    """What one subscriber received of one track."""

    kind: str
    packets: int = 0
    octets: int = 0
    lost: int = 0
    srtp_checked: int = 0
    srtp_errors: int = 0
    enabled: bool = True
    """False when the layout disabled it (no media expected)."""


@dataclass
class TesterResult:
    """One participant's run."""

    identity: str
    publishes: bool
    subscribes: bool
    joined: bool = False
    error: str = ""
    connect_ms: float | None = None
    """From opening the WebSocket to the primary (subscriber) transport connected; for a
    publisher, to both transports connected."""
    first_media_ms: float | None = None
    """From opening the WebSocket to the first media packet, for subscribers that joined
    after tracks were published."""
    tracks: dict[str, TrackResult] = field(default_factory=dict)
    expected_tracks: int = 0
    expected_media_tracks: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TesterResult:
        tracks = {sid: TrackResult(**value) for sid, value in data.get("tracks", {}).items()}
        return cls(**{**data, "tracks": tracks})


@dataclass
class WindowCounts:
    """Totals a process counted between the measurement window's start and end."""

    seconds: float = 0.0
    packets_in: int = 0
    octets_in: int = 0
    expected_in: int = 0
    """Packets the subscribers' sequence numbers say were sent to them in the window."""
    packets_out: int = 0
    octets_out: int = 0
    cpu_seconds: float = 0.0
    """The load generator's own CPU time in the window."""
    audio_packets_in: int = 0
    """Of ``packets_in``, those of audio tracks (Opus: 50 a second per track, whatever the
    layout does to video)."""
    audio_tracks: int = 0
    """Audio tracks that were receiving at the window's end."""

    def add(self, other: WindowCounts) -> None:
        self.packets_in += other.packets_in
        self.octets_in += other.octets_in
        self.expected_in += other.expected_in
        self.packets_out += other.packets_out
        self.octets_out += other.octets_out
        self.cpu_seconds += other.cpu_seconds
        self.audio_packets_in += other.audio_packets_in
        self.audio_tracks += other.audio_tracks
        self.seconds = max(self.seconds, other.seconds)


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[min(len(ordered), int(rank)) - 1]


@dataclass
class Summary:
    """The whole run, merged over worker processes."""

    room: str
    participants: int
    joined: int
    failed: int
    errors: list[str]
    tracks_expected: int
    tracks_received: int
    media_tracks_expected: int
    media_tracks_received: int
    packets_received: int
    packets_lost: int
    srtp_checked: int
    srtp_errors: int
    window: WindowCounts
    connect_p50_ms: float | None
    connect_p99_ms: float | None
    first_media_p50_ms: float | None
    first_media_p99_ms: float | None
    server_cpu_seconds: float | None = None
    per_kind: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def loss_percent(self) -> float:
        total = self.packets_received + self.packets_lost
        return 100.0 * self.packets_lost / total if total else 0.0

    @property
    def window_loss_percent(self) -> float:
        """Loss in the measurement window only (joins excluded): the steady state."""
        window = self.window
        lost = max(0, window.expected_in - window.packets_in)
        return 100.0 * lost / window.expected_in if window.expected_in else 0.0

    @property
    def server_us_per_packet(self) -> float | None:
        if self.server_cpu_seconds is None or not self.window.packets_in:
            return None
        return 1e6 * self.server_cpu_seconds / self.window.packets_in

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["loss_percent"] = self.loss_percent
        data["window_loss_percent"] = self.window_loss_percent
        data["server_us_per_packet"] = self.server_us_per_packet
        seconds = self.window.seconds or 1.0
        data["rates"] = {
            "packets_in_per_s": self.window.packets_in / seconds,
            "bits_in_per_s": 8 * self.window.octets_in / seconds,
            "packets_out_per_s": self.window.packets_out / seconds,
            "bits_out_per_s": 8 * self.window.octets_out / seconds,
        }
        return data


def summarize(
    room: str, testers: list[TesterResult], window: WindowCounts, server_cpu: float | None
) -> Summary:
    subscribers = [t for t in testers if t.subscribes]
    tracks = [track for t in subscribers for track in t.tracks.values()]
    connects = [t.connect_ms for t in testers if t.connect_ms is not None]
    media = [t.first_media_ms for t in subscribers if t.first_media_ms is not None]
    per_kind: dict[str, dict[str, float]] = {}
    for track in tracks:
        entry = per_kind.setdefault(track.kind, {"tracks": 0, "packets": 0, "lost": 0})
        entry["tracks"] += 1 if track.packets else 0
        entry["packets"] += track.packets
        entry["lost"] += track.lost
    return Summary(
        room=room,
        participants=len(testers),
        joined=sum(1 for t in testers if t.joined),
        failed=sum(1 for t in testers if t.error),
        errors=sorted({t.error for t in testers if t.error}),
        tracks_expected=sum(t.expected_tracks for t in subscribers),
        tracks_received=sum(len(t.tracks) for t in subscribers),
        media_tracks_expected=sum(t.expected_media_tracks for t in subscribers),
        media_tracks_received=sum(1 for track in tracks if track.packets and track.enabled),
        packets_received=sum(track.packets for track in tracks),
        packets_lost=sum(track.lost for track in tracks),
        srtp_checked=sum(track.srtp_checked for track in tracks),
        srtp_errors=sum(track.srtp_errors for track in tracks),
        window=window,
        connect_p50_ms=percentile(connects, 0.50),
        connect_p99_ms=percentile(connects, 0.99),
        first_media_p50_ms=percentile(media, 0.50),
        first_media_p99_ms=percentile(media, 0.99),
        server_cpu_seconds=server_cpu,
        per_kind=per_kind,
    )
