"""What configuration cannot work is refused here, each problem as one :class:`ConfigError`
line naming its key."""

from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit

from config.build import duration_seconds, shown
from config.network import host_port, is_ip
from config.schema import Config

_LEVELS = {"trace", "debug", "info", "warn", "warning", "error"}
_SELECTORS = {"any", "sysload", "cpuload", "regionaware", "random"}


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line naming the problem."""


def _check_port(name: str, value: int, *, optional: bool) -> None:
    if not (optional and value == 0) and not 1 <= value <= 65535:
        allowed = "0 (unset) or 1-65535" if optional else "1-65535"
        raise ConfigError(f"{name}: {value} is not a port number ({allowed})")


def _check_range(start_name: str, start: int, end_name: str, end: int) -> None:
    if start > end:
        raise ConfigError(f"{start_name} ({start}) is greater than {end_name} ({end})")


def validate(config: Config) -> None:
    """Refuse what cannot work."""
    rtc, turn = config.rtc, config.turn
    for name, value in {
        "port": config.port,
        "rtc.port_range_start": rtc.port_range_start,
        "rtc.port_range_end": rtc.port_range_end,
    }.items():
        _check_port(name, value, optional=False)
    for name, value in {
        "rtc.udp_port": rtc.udp_port,
        "rtc.udp_port (range end)": rtc.udp_port_end,
        "rtc.tcp_port": rtc.tcp_port,  # 0 turns ICE/TCP off
        "prometheus_port": config.prometheus_port,
        "prometheus.port": config.prometheus.port,
        "turn.tls_port": turn.tls_port,
        "turn.udp_port": turn.udp_port,
    }.items():
        _check_port(name, value, optional=True)
    _check_range(
        "rtc.port_range_start", rtc.port_range_start, "rtc.port_range_end", rtc.port_range_end
    )
    if rtc.udp_port_end:
        _check_range("rtc.udp_port", rtc.udp_port, "its range end", rtc.udp_port_end)
    _check_range(
        "turn.relay_range_start",
        turn.relay_range_start,
        "turn.relay_range_end",
        turn.relay_range_end,
    )
    if bool(config.prometheus.username) != bool(config.prometheus.password):
        # LiveKit refuses to start too (``service/server.go``): half a credential protects nothing.
        raise ConfigError("prometheus.username and prometheus.password: set both or neither")
    _validate_choices(config)
    _validate_addresses(config)
    _validate_not_negative(config)
    _validate_turn_servers(config)


def _validate_turn_servers(config: Config) -> None:
    """A TURN server a client cannot use would fail only at its connect: refuse it here."""
    for index, server in enumerate(config.rtc.turn_servers):
        name = f"rtc.turn_servers[{index}]"
        if not server.host:
            raise ConfigError(f"{name}.host is empty")
        _check_port(f"{name}.port", server.port, optional=False)
        if server.protocol.lower() not in ("udp", "tcp", "tls"):
            raise ConfigError(f"{name}.protocol: {shown(server.protocol)} is not udp, tcp or tls")
        has_static = bool(server.username and server.credential)
        if not (server.secret or server.secret_file or has_static):
            raise ConfigError(f"{name}: set secret, secret_file, or username and credential")


def _validate_addresses(config: Config) -> None:
    for index, address in enumerate(config.bind_addresses):
        if not is_ip(address):
            raise ConfigError(f"bind_addresses[{index}]: {shown(address)} is not an IP address")
    if config.rtc.node_ip and not is_ip(config.rtc.node_ip):
        raise ConfigError(f"rtc.node_ip: {shown(config.rtc.node_ip)} is not an IP address")
    redis = config.redis
    named = [("redis.address", redis.address)] if redis.address else []
    named += [(f"redis.sentinel_addresses[{i}]", a) for i, a in enumerate(redis.sentinel_addresses)]
    for name, address in named:
        try:
            host_port(address)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None


def _validate_not_negative(config: Config) -> None:
    """Counts, sizes and timeouts below zero mean nothing (LiveKit's are unsigned)."""
    sections: dict[str, object] = {
        "room": config.room,
        "limit": config.limit,
        "audio": config.audio,
        "video": config.video,
    }
    for section_name, section in sections.items():
        for field in dataclasses.fields(section):  # type: ignore[arg-type]
            value = getattr(section, field.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"{section_name}.{field.name}: {value} is negative")


def _validate_choices(config: Config) -> None:
    for name, level in {
        "logging.level": config.logging.level,
        "logging.pion_level": config.logging.pion_level,
    }.items():
        if level.lower() not in _LEVELS:
            raise ConfigError(
                f"{name}: unknown level {shown(level)} (trace, debug, info, warn or error)"
            )
    if config.node_selector.kind.lower() not in _SELECTORS:
        raise ConfigError(
            f"node_selector.kind: unknown kind {shown(config.node_selector.kind)}"
            " (any, sysload, cpuload or regionaware)"
        )
    _validate_webhook(config)
    _validate_video(config)
    _validate_congestion(config)


def _validate_congestion(config: Config) -> None:
    allocator = config.rtc.congestion_control.stream_allocator
    name = "rtc.congestion_control.stream_allocator"
    if allocator.probe_mode.lower() not in ("padding", "none"):
        raise ConfigError(
            f"{name}.probe_mode: {shown(allocator.probe_mode)} is not padding or none"
            " (media probing is not implemented)"
        )
    if allocator.probe_overage_pct < 100 or allocator.probe_min_bps < 0:
        raise ConfigError(f"{name}: probe_overage_pct must be at least 100, probe_min_bps >= 0")
    try:
        wait = duration_seconds(allocator.paused_min_wait)
    except ValueError as exc:
        raise ConfigError(f"{name}.paused_min_wait: {exc}") from None
    if wait < 0:
        raise ConfigError(f"{name}.paused_min_wait is negative")


def _validate_video(config: Config) -> None:
    try:
        delay = duration_seconds(config.video.dynacast_pause_delay)
    except ValueError as exc:
        raise ConfigError(f"video.dynacast_pause_delay: {exc}") from None
    if delay < 0:
        raise ConfigError("video.dynacast_pause_delay is negative")
    if config.audio.update_interval < 1:
        raise ConfigError("audio.update_interval must be at least 1 ms")


def _validate_webhook(config: Config) -> None:
    webhook = config.webhook
    if webhook.api_key and webhook.api_key not in config.keys:
        raise ConfigError(f"webhook.api_key {shown(webhook.api_key)} is not one of keys")
    if webhook.urls and not webhook.api_key:
        # LiveKit refuses to start too (ErrWebHookMissingAPIKey): nothing could sign them.
        raise ConfigError("webhook.urls are set but webhook.api_key is empty; set one of keys")
    for index, url in enumerate(webhook.urls):
        if not _is_http_url(url):
            raise ConfigError(f"webhook.urls[{index}]: expected an http(s) URL, got {shown(url)}")
    max_age = webhook.resource_url_notifier.max_age
    try:
        negative = duration_seconds(max_age) < 0
    except ValueError as exc:
        raise ConfigError(f"webhook.resource_url_notifier.max_age: {exc}") from None
    if negative or webhook.resource_url_notifier.max_depth < 0:
        raise ConfigError(
            "webhook.resource_url_notifier: max_age and max_depth must not be negative"
        )


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


#: Environment variables that are not keys but are read: the worker count (server/cli.py),
#: the pure-Python fan-out switch (sfu/fanout.py), and what LiveKit's own tools (lk, the
#: server SDKs) read, which users export in the same shell.
