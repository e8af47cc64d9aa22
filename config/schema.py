"""The configuration tree, mirroring LiveKit's YAML keys (``livekit/config-sample.yaml``).

Every field has LiveKit's default (from ``pkg/config/config.go DefaultConfig``, which sometimes
differs from the sample's comments). The tree is frozen: it is built once at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class TurnServerConfig:
    """An external TURN server handed to clients (``rtc.turn_servers[]``)."""

    host: str = ""
    """Host name or address clients connect to."""
    port: int = 0
    """TURN port on that host."""
    protocol: str = "udp"
    """udp, tcp or tls."""
    username: str = ""
    """Static username (with ``credential``), when no shared ``secret`` is used."""
    credential: str = ""
    """Static password for ``username``."""
    secret: str = ""
    """Shared secret for time-limited credentials (TURN REST API)."""
    secret_file: str = ""
    """File holding ``secret`` instead of the config itself."""
    ttl: int = 14400
    """Lifetime of time-limited credentials, seconds (LiveKit caps it at 86400)."""


@dataclass(frozen=True)
class StreamAllocatorConfig:
    """``rtc.congestion_control.stream_allocator``: how the allocator probes and pauses."""

    probe_mode: str = "padding"
    """padding (probe with padding-only packets on the RTX stream) or none."""
    probe_overage_pct: int = 120
    """A probe sends this share (%) of the rate the next layer up needs."""
    probe_min_bps: int = 200_000
    """The least a probe sends."""
    paused_min_wait: str = "5s"
    """How long (a Go duration) a track paused for bandwidth stays paused at least."""


@dataclass(frozen=True)
class CongestionControlConfig:
    """``rtc.congestion_control``: per-subscriber bandwidth estimation and allocation."""

    enabled: bool = True
    """Estimate each subscriber's bandwidth (transport-cc, or REMB) and fit its video to it."""
    allow_pause: bool = False
    """Pause the video a subscriber's bandwidth cannot carry even at its lowest layer."""
    stream_allocator: StreamAllocatorConfig = field(default_factory=StreamAllocatorConfig)


@dataclass(frozen=True)
class RTCConfig:
    """WebRTC transport (``rtc``)."""

    udp_port: int = 0
    """Single UDP port for all WebRTC traffic; 0 = unset (a port range is used instead)."""
    udp_port_end: int = 0
    """End of a ``udp_port`` range written as "7882-7892"; 0 = a single port. Derived, not a
    YAML key of its own."""
    tcp_port: int = 7881
    """ICE/TCP port (passive candidates)."""
    port_range_start: int = 50000
    """First UDP port handed out per participant when ``udp_port`` is unset."""
    port_range_end: int = 60000
    """Last UDP port of that range."""
    node_ip: str = ""
    """IP address advertised to clients; empty = discovered from the interfaces."""
    use_external_ip: bool = False
    """Discover the public address with STUN and advertise it."""
    stun_servers: tuple[str, ...] = ()
    """STUN servers handed to clients, "host:port"."""
    turn_servers: tuple[TurnServerConfig, ...] = ()
    """External TURN servers handed to clients."""
    use_ice_lite: bool = False
    """Answer with ICE-lite."""
    use_mdns: bool = False
    """Resolve and advertise mDNS candidates."""
    enable_loopback_candidate: bool = False
    """Advertise 127.0.0.1 too (on in dev mode, as LiveKit's)."""
    allow_tcp_fallback: bool = True
    """Move clients to ICE/TCP or TURN/TLS when UDP fails."""
    packet_buffer_size_video: int = 500
    """Packets cached per video track for NACK retransmission."""
    packet_buffer_size_audio: int = 200
    """Packets cached per audio track for NACK retransmission."""
    congestion_control: CongestionControlConfig = field(default_factory=CongestionControlConfig)
    """Per-subscriber congestion control (LiveKit's keys and defaults)."""


@dataclass(frozen=True)
class CodecSpec:
    """One codec a room negotiates (``room.enabled_codecs[]``)."""

    mime: str = ""
    """Mime type such as "video/VP8" or "audio/opus"."""
    fmtp_line: str = ""
    """Only offer the codec with this fmtp line (e.g. one H264 profile); empty = any."""


DEFAULT_CODECS = tuple(
    CodecSpec(mime)
    for mime in (
        "audio/opus",
        "audio/red",
        "video/VP8",
        "video/H264",
        "video/VP9",
        "video/AV1",
        "video/rtx",
    )
)


@dataclass(frozen=True)
class RoomConfig:
    """Room lifecycle and media (``room``)."""

    auto_create: bool = True
    """Whether a join may create its room."""
    empty_timeout: int = 300
    """Seconds a room nobody joined stays open."""
    departure_timeout: int = 20
    """Seconds a room stays open after the last participant left."""
    max_participants: int = 0
    """Participants per room; 0 = unlimited."""
    enable_remote_unmute: bool = False
    """Let the server API unmute a participant's track."""
    enabled_codecs: tuple[CodecSpec, ...] = DEFAULT_CODECS
    """Codecs negotiated with publishers."""
    max_metadata_size: int = 0
    """Legacy spelling of ``limit.max_metadata_size``; 0 = unset."""
    max_room_name_length: int = 0
    """Legacy spelling of ``limit.max_room_name_length``; 0 = unset."""
    max_participant_identity_length: int = 0
    """Legacy spelling of ``limit.max_participant_identity_length``; 0 = unset."""


@dataclass(frozen=True)
class LoggingConfig:
    """Log output (``logging``)."""

    level: str = "info"
    """debug, info, warn (or warning) or error; debug in dev mode unless set."""
    json: bool = False
    """One JSON object per line instead of console text."""
    pion_level: str = "error"
    """Level of the WebRTC libraries' loggers (aiortc, aioice)."""
    sample: bool = False
    """Sample repetitive log lines."""


@dataclass(frozen=True)
class RedisConfig:
    """Shared state between nodes (``redis``); unset = a single node in memory."""

    address: str = ""
    """host:port of a single Redis."""
    username: str = ""
    """ACL user name."""
    password: str = ""
    """Password (of ``username``, or the default user)."""
    db: int = 0
    """Database number; ignored by a cluster."""
    use_tls: bool = False
    """Connect with TLS."""
    sentinel_master_name: str = ""
    """Master name to ask the sentinels for."""
    sentinel_username: str = ""
    """User name at the sentinels."""
    sentinel_password: str = ""
    """Password at the sentinels."""
    sentinel_addresses: tuple[str, ...] = ()
    """host:port of each sentinel."""
    cluster_addresses: tuple[str, ...] = ()
    """host:port of cluster nodes."""
    max_redirects: int = 0
    """Cluster redirects to follow; 0 = the client's default."""

    @property
    def enabled(self) -> bool:
        """Whether any Redis (single, sentinel or cluster) is configured."""
        return bool(self.address or self.sentinel_addresses or self.cluster_addresses)


@dataclass(frozen=True)
class ResourceURLNotifierConfig:
    """Per-room delivery queues (``webhook.resource_url_notifier``)."""

    max_age: str = "30s"
    """Go duration; an event waiting longer than this is dropped ("0s" = the default 30s)."""
    max_depth: int = 200
    """Events queued per room and URL before new ones are dropped (0 = the default 200)."""


@dataclass(frozen=True)
class WebhookFilterConfig:
    """Which events are sent (``webhook.filter_params``); LiveKit's rule: an included event
    is always sent, otherwise any event not excluded is."""

    include_events: tuple[str, ...] = ()
    """Event names always sent, even when excluded."""
    exclude_events: tuple[str, ...] = ()
    """Event names not sent."""


@dataclass(frozen=True)
class WebhookConfig:
    """Event notifications over HTTP (``webhook``)."""

    api_key: str = ""
    """Key (one of ``keys``) whose secret signs the requests."""
    urls: tuple[str, ...] = ()
    """Endpoints that receive every event."""
    resource_url_notifier: ResourceURLNotifierConfig = field(
        default_factory=ResourceURLNotifierConfig
    )
    """Queue limits."""
    filter_params: WebhookFilterConfig = field(default_factory=WebhookFilterConfig)
    """Event filter."""


@dataclass(frozen=True)
class TurnConfig:
    """The embedded TURN server (``turn``)."""

    enabled: bool = False
    """Run the TURN server."""
    domain: str = ""
    """Domain clients use; must match the TLS certificate."""
    tls_port: int = 0
    """TURN/TLS port; 0 = off."""
    udp_port: int = 0
    """TURN/UDP port; 0 = off."""
    external_tls: bool = False
    """TLS is terminated by a load balancer in front."""
    cert_file: str = ""
    """TLS certificate (also env LIVEKIT_TURN_CERT)."""
    key_file: str = ""
    """TLS private key (also env LIVEKIT_TURN_KEY)."""
    relay_range_start: int = 30000
    """First relay port."""
    relay_range_end: int = 40000
    """Last relay port."""


@dataclass(frozen=True)
class PrometheusConfig:
    """Metrics endpoint (``prometheus``)."""

    port: int = 0
    """Port serving /metrics; 0 = off."""
    username: str = ""
    """Basic-auth user (with ``password``)."""
    password: str = ""
    """Basic-auth password."""


@dataclass(frozen=True)
class LimitConfig:
    """Capacity and size limits (``limit``); 0 = no limit where a limit is optional."""

    num_tracks: int = 0
    """Published tracks per node before joins are refused; 0 = off."""
    bytes_per_sec: float = 0.0
    """Forwarded bytes per second per node before joins are refused; 0 = off."""
    subscription_limit_video: int = 0
    """Video subscriptions per participant; 0 = unlimited."""
    subscription_limit_audio: int = 0
    """Audio subscriptions per participant; 0 = unlimited."""
    max_metadata_size: int = 512 * 1024
    """Bytes of room or participant metadata."""
    max_attributes_size: int = 64 * 1024
    """Bytes of participant attributes."""
    max_room_name_length: int = 256
    """Characters of a room name."""
    max_participant_identity_length: int = 256
    """Characters of a participant identity."""
    max_participant_name_length: int = 256
    """Characters of a participant name."""
    signal_message_size_limit: int = 2 * 1024 * 1024
    """Bytes of one signaling message; a bigger one closes that connection."""
    max_api_request_body_size: int = 10 * 1024 * 1024
    """Bytes of a server API request body."""
    max_connections_per_source: int = 1000
    """Open HTTP and ICE-TCP connections from one address (ours, not LiveKit's); 0 = no cap."""


@dataclass(frozen=True)
class AudioConfig:
    """Active speaker detection (``audio``), LiveKit's keys and defaults."""

    active_level: int = 35
    """Loudest level counted as speech, in -dBov (0 loudest, 127 silence)."""
    min_percentile: int = 40
    """Share of an interval (%) that must be speech for a participant to be speaking."""
    update_interval: int = 400
    """Milliseconds between speaker updates."""
    smooth_intervals: int = 2
    """Intervals the level is smoothed over (0 = none)."""


@dataclass(frozen=True)
class VideoConfig:
    """Video forwarding (``video``)."""

    dynacast_pause_delay: str = "5s"
    """How long (a Go duration) a lower layer wish must hold before the publisher is told to
    stop layers."""


@dataclass(frozen=True)
class RegionConfig:
    """A region and its location (``node_selector.regions[]``)."""

    name: str = ""
    """Region name, as nodes report it."""
    lat: float = 0.0
    """Latitude, degrees."""
    lon: float = 0.0
    """Longitude, degrees."""


@dataclass(frozen=True)
class NodeSelectorConfig:
    """Which node hosts a new room (``node_selector``)."""

    kind: str = "any"
    """any, sysload, cpuload or regionaware ("random" is LiveKit's deprecated any)."""
    sort_by: str = "random"
    """random, sysload, cpuload, rooms, clients, tracks or bytespersec."""
    algorithm: str = "lowest"
    """lowest or twochoice."""
    sysload_limit: float = 0.9
    """Load per CPU above which a node is skipped (sysload kind)."""
    cpu_load_limit: float = 0.9
    """CPU use above which a node is skipped (cpuload kind)."""
    regions: tuple[RegionConfig, ...] = ()
    """Known regions (regionaware kind)."""


@dataclass(frozen=True)
class Config:
    """The whole configuration (the YAML's top level)."""

    port: int = 7880
    """HTTP, WebSocket and API port."""
    bind_addresses: tuple[str, ...] = ()
    """Addresses to listen on; empty = all interfaces."""
    development: bool = False
    """Development mode, as ``--dev``."""
    region: str = ""
    """Region of this node."""
    keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """API key -> secret (read-only)."""
    key_file: str = ""
    """YAML file of key: secret lines; not readable by others."""
    rtc: RTCConfig = field(default_factory=RTCConfig)
    """WebRTC transport."""
    room: RoomConfig = field(default_factory=RoomConfig)
    """Rooms."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Log output."""
    redis: RedisConfig = field(default_factory=RedisConfig)
    """Shared state between nodes."""
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    """Event notifications."""
    turn: TurnConfig = field(default_factory=TurnConfig)
    """Embedded TURN server."""
    prometheus_port: int = 0
    """Deprecated in LiveKit in favour of ``prometheus.port``; both are accepted."""
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    """Metrics endpoint."""
    limit: LimitConfig = field(default_factory=LimitConfig)
    """Capacity and size limits."""
    audio: AudioConfig = field(default_factory=AudioConfig)
    """Active speaker detection."""
    video: VideoConfig = field(default_factory=VideoConfig)
    """Video forwarding."""
    node_selector: NodeSelectorConfig = field(default_factory=NodeSelectorConfig)
    """Room placement across nodes."""

    @property
    def metrics_port(self) -> int:
        """The metrics port from either key, the deprecated one first as LiveKit reads them
        (``service/server.go``); 0 = metrics off."""
        return self.prometheus_port or self.prometheus.port
