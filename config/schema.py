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
    port: int = 0
    protocol: str = "udp"
    username: str = ""
    credential: str = ""
    secret: str = ""
    ttl: int = 14400


@dataclass(frozen=True)
class RTCConfig:
    udp_port: int = 0
    """Single UDP port for all WebRTC traffic; 0 = unset (a port range is used instead)."""
    udp_port_end: int = 0
    """End of a ``udp_port`` range written as "7882-7892"; 0 = a single port."""
    tcp_port: int = 7881
    """ICE/TCP port."""
    port_range_start: int = 50000
    port_range_end: int = 60000
    node_ip: str = ""
    """IP address advertised to clients; empty = discovered from the interfaces."""
    use_external_ip: bool = False
    stun_servers: tuple[str, ...] = ()
    turn_servers: tuple[TurnServerConfig, ...] = ()
    use_ice_lite: bool = False
    use_mdns: bool = False
    enable_loopback_candidate: bool = False
    """Advertise 127.0.0.1 too (on in dev mode, as LiveKit's)."""
    allow_tcp_fallback: bool = True
    packet_buffer_size_video: int = 500
    packet_buffer_size_audio: int = 200


@dataclass(frozen=True)
class CodecSpec:
    mime: str = ""
    fmtp_line: str = ""


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
    auto_create: bool = True
    """Whether a join may create its room."""
    empty_timeout: int = 300
    """Seconds a room nobody joined stays open."""
    departure_timeout: int = 20
    """Seconds a room stays open after the last participant left."""
    max_participants: int = 0
    """0 = unlimited."""
    enable_remote_unmute: bool = False
    enabled_codecs: tuple[CodecSpec, ...] = DEFAULT_CODECS
    max_metadata_size: int = 0
    max_room_name_length: int = 0
    max_participant_identity_length: int = 0


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    json: bool = False
    """One JSON object per line instead of console text."""
    pion_level: str = "error"
    """Level of the WebRTC libraries' loggers (aiortc, aioice)."""
    sample: bool = False


@dataclass(frozen=True)
class RedisConfig:
    address: str = ""
    username: str = ""
    password: str = ""
    db: int = 0
    use_tls: bool = False
    sentinel_master_name: str = ""
    sentinel_username: str = ""
    sentinel_password: str = ""
    sentinel_addresses: tuple[str, ...] = ()
    cluster_addresses: tuple[str, ...] = ()
    max_redirects: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.address or self.sentinel_addresses or self.cluster_addresses)


@dataclass(frozen=True)
class WebhookConfig:
    api_key: str = ""
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class TurnConfig:
    enabled: bool = False
    domain: str = ""
    tls_port: int = 0
    udp_port: int = 0
    external_tls: bool = False
    cert_file: str = ""
    key_file: str = ""
    relay_range_start: int = 30000
    relay_range_end: int = 40000


@dataclass(frozen=True)
class PrometheusConfig:
    port: int = 0
    username: str = ""
    password: str = ""


@dataclass(frozen=True)
class LimitConfig:
    num_tracks: int = 0
    bytes_per_sec: float = 0.0
    subscription_limit_video: int = 0
    subscription_limit_audio: int = 0
    max_metadata_size: int = 512 * 1024
    max_attributes_size: int = 64 * 1024
    max_room_name_length: int = 256
    max_participant_identity_length: int = 256
    max_participant_name_length: int = 256
    signal_message_size_limit: int = 2 * 1024 * 1024
    max_api_request_body_size: int = 10 * 1024 * 1024


@dataclass(frozen=True)
class RegionConfig:
    name: str = ""
    lat: float = 0.0
    lon: float = 0.0


@dataclass(frozen=True)
class NodeSelectorConfig:
    kind: str = "any"
    sort_by: str = "random"
    algorithm: str = "lowest"
    sysload_limit: float = 0.9
    cpu_load_limit: float = 0.9
    regions: tuple[RegionConfig, ...] = ()


@dataclass(frozen=True)
class Config:
    port: int = 7880
    """HTTP, WebSocket and API port."""
    bind_addresses: tuple[str, ...] = ()
    """Addresses to listen on; empty = all interfaces."""
    development: bool = False
    region: str = ""
    keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """API key -> secret."""
    key_file: str = ""
    rtc: RTCConfig = field(default_factory=RTCConfig)
    room: RoomConfig = field(default_factory=RoomConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    prometheus_port: int = 0
    """Deprecated in LiveKit in favour of ``prometheus.port``; both are accepted."""
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    limit: LimitConfig = field(default_factory=LimitConfig)
    node_selector: NodeSelectorConfig = field(default_factory=NodeSelectorConfig)

    @property
    def metrics_port(self) -> int:
        return self.prometheus.port or self.prometheus_port
