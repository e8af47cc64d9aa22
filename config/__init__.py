"""Typed configuration with LiveKit's keys and a strict loader."""

from config.loader import CliOverrides, LoadedConfig, load_config
from config.schema import (
    CodecSpec,
    Config,
    LimitConfig,
    LoggingConfig,
    NodeSelectorConfig,
    PrometheusConfig,
    RedisConfig,
    RegionConfig,
    RoomConfig,
    RTCConfig,
    TurnConfig,
    TurnServerConfig,
    WebhookConfig,
)
from config.validate import ConfigError

__all__ = [
    "CliOverrides",
    "CodecSpec",
    "Config",
    "ConfigError",
    "LimitConfig",
    "LoadedConfig",
    "LoggingConfig",
    "NodeSelectorConfig",
    "PrometheusConfig",
    "RTCConfig",
    "RedisConfig",
    "RegionConfig",
    "RoomConfig",
    "TurnConfig",
    "TurnServerConfig",
    "WebhookConfig",
    "load_config",
]
