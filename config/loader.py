"""Where the configuration comes from, in LiveKit's order (``cmd/server/main.go getConfig``):
defaults < YAML file or body < environment < command-line flags; then dev-mode defaults and
validation. Every problem is a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from config.build import SchemaError, build, convert, leaf_paths, scalar_paths
from config.schema import Config

#: Keys whose behaviour exists; any other key a user sets is accepted with one warning.
IMPLEMENTED_KEYS = frozenset(
    {
        "port", "bind_addresses", "development", "region", "keys", "key_file",
        "rtc.node_ip", "rtc.stun_servers", "rtc.enable_loopback_candidate", "rtc.udp_port",
        "rtc.tcp_port", "rtc.port_range_start", "rtc.port_range_end",
        "room.auto_create", "room.empty_timeout", "room.departure_timeout",
        "room.max_participants", "room.enabled_codecs",
        "logging.level", "logging.json", "logging.pion_level",
        "limit.signal_message_size_limit", "limit.max_api_request_body_size",
        "limit.max_room_name_length", "limit.max_participant_identity_length",
    }
)  # fmt: skip
#: LiveKit sections we have no schema for yet: accepted (so LiveKit configs load), warned about.
LIVEKIT_ONLY_SECTIONS = frozenset(
    {
        "audio", "video", "ingress", "sip", "signal_relay", "psrpc", "node_stats", "agents",
        "trace", "debug_handler", "api", "metric", "rtc.congestion_control", "rtc.batch_io",
        "rtc.interfaces", "rtc.ips", "webhook.url_notifier", "webhook.resource_url_notifier",
        "webhook.filter_params", "enable_data_tracks", "enable_participant_data_blob",
        "room.playout_delay", "room.sync_streams", "room.room_configurations",
        "room.create_room_timeout", "room.create_room_attempts",
        "room.update_batch_target_size", "room.enable_full_room_in_webhooks",
        "redis.tls", "redis.dial_timeout", "redis.read_timeout", "redis.write_timeout",
        "redis.pool_timeout", "redis.pool_size", "turn.bind_addresses", "turn.ttl_seconds",
        "turn.per_user_relay_allocation_limit", "turn.allow_restricted_peer_cidrs",
        "turn.deny_peer_cidrs",
    }
)  # fmt: skip
#: Env vars LiveKit reads by name (besides the generated ``LIVEKIT_<PATH>`` ones).
NAMED_ENV = {
    "NODE_IP": "rtc.node_ip",
    "UDP_PORT": "rtc.udp_port",
    "LIVEKIT_REGION": "region",
    "REDIS_HOST": "redis.address",
    "REDIS_PASSWORD": "redis.password",
}
_NOT_GENERATED = {"LIVEKIT_CONFIG", "LIVEKIT_KEYS", "LIVEKIT_REGION"}
_LEVELS = {"debug", "info", "warn", "warning", "error"}
_SELECTORS = {"any", "sysload", "cpuload", "regionaware", "random"}
DEV_KEYS = {"devkey": "secret"}


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line naming the problem."""


@dataclass(frozen=True)
class CliOverrides:
    """Command-line flags; ``None`` means not given."""

    config_path: str | None = None
    config_body: str | None = None
    dev: bool = False
    bind: tuple[str, ...] = ()
    port: int | None = None
    keys: str | None = None
    key_file: str | None = None
    node_ip: str | None = None
    udp_port: int | None = None
    region: str | None = None
    redis_host: str | None = None
    redis_password: str | None = None


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    warnings: tuple[str, ...] = ()
    """One line each: keys accepted but not implemented yet, weak secrets."""
    dev_placeholder_keys: bool = False
    """``--dev`` supplied devkey/secret because no keys were given."""


def load_config(cli: CliOverrides, env: Mapping[str, str]) -> LoadedConfig:
    raw = _read_yaml(cli, env)
    if "log_level" in raw:  # LiveKit's legacy spelling of logging.level
        raw.setdefault("logging", {}).setdefault("level", raw.pop("log_level"))
    _apply_env(raw, env)
    user_set = set(leaf_paths(raw))
    warnings = [_not_implemented(path) for path in sorted(user_set) if not _implemented(path)]
    _strip_livekit_only(raw)
    _apply_flags(raw, cli)
    try:
        config = build(Config, raw)
    except SchemaError as exc:
        raise ConfigError(str(exc)) from None
    config, placeholder = _with_keys(config, cli, env)
    config = _apply_dev_defaults(config, cli, user_set, placeholder)
    warnings += _validate(config)
    return LoadedConfig(config, tuple(warnings), placeholder)


def _read_yaml(cli: CliOverrides, env: Mapping[str, str]) -> dict[str, Any]:
    # The body (flag, then LIVEKIT_CONFIG) wins over the file, as in LiveKit.
    body = cli.config_body if cli.config_body is not None else env.get("LIVEKIT_CONFIG")
    if body is not None:
        return _parse_yaml(body, "--config-body")
    if cli.config_path is None:
        return {}
    try:
        text = Path(cli.config_path).read_text()
    except FileNotFoundError:
        raise ConfigError(f'config file "{cli.config_path}" not found') from None
    except OSError as exc:
        raise ConfigError(f'cannot read config file "{cli.config_path}": {exc.strerror}') from None
    return _parse_yaml(text, cli.config_path)


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level")
    return data


def _implemented(path: str) -> bool:
    return any(path == key or path.startswith(key + ".") for key in IMPLEMENTED_KEYS)


def _not_implemented(path: str) -> str:
    return f'config key "{path}" is accepted but not implemented yet'


def _strip_livekit_only(raw: dict[str, Any]) -> None:
    for section in LIVEKIT_ONLY_SECTIONS:
        *parents, leaf = section.split(".")
        node: Any = raw
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)


def _set(raw: dict[str, Any], path: str, value: object) -> None:
    *parents, leaf = path.split(".")
    node = raw
    for parent in parents:
        child = node.get(parent)
        if not isinstance(child, dict):
            child = node[parent] = {}
        node = child
    node[leaf] = value


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for path, hint in scalar_paths(Config):
        name = "LIVEKIT_" + path.replace(".", "_").upper()
        if name in env and name not in _NOT_GENERATED:
            _set(raw, path, _env_value(name, hint, env[name]))
    for name, path in NAMED_ENV.items():
        if env.get(name):
            _set(raw, path, env[name])


def _env_value(name: str, hint: Any, value: str) -> object:
    try:
        return convert(hint, value, name)
    except SchemaError as exc:
        raise ConfigError(f"environment {exc}") from None


def _apply_flags(raw: dict[str, Any], cli: CliOverrides) -> None:
    flags: dict[str, object | None] = {
        "port": cli.port,
        "rtc.node_ip": cli.node_ip,
        "rtc.udp_port": cli.udp_port,
        "region": cli.region,
        "redis.address": cli.redis_host,
        "redis.password": cli.redis_password,
        "key_file": cli.key_file,
    }
    for path, value in flags.items():
        if value is not None:
            _set(raw, path, value)
    if cli.bind:
        raw["bind_addresses"] = list(cli.bind)
    if cli.dev:
        raw["development"] = True
    _split_udp_range(raw)


def _split_udp_range(raw: dict[str, Any]) -> None:
    """``rtc.udp_port`` may be a range "7882-7892" (LiveKit's PortRange)."""
    rtc = raw.get("rtc")
    if not isinstance(rtc, dict) or not isinstance(rtc.get("udp_port"), str):
        return
    first, sep, last = rtc["udp_port"].partition("-")
    if sep:
        rtc["udp_port"], rtc["udp_port_end"] = first.strip(), last.strip()


def _with_keys(config: Config, cli: CliOverrides, env: Mapping[str, str]) -> tuple[Config, bool]:
    keys = dict(config.keys)
    text = cli.keys if cli.keys is not None else env.get("LIVEKIT_KEYS")
    if text:
        keys = _parse_keys(text, "--keys" if cli.keys is not None else "LIVEKIT_KEYS")
    if config.key_file:
        if keys:
            raise ConfigError("both keys and key_file are set; use one of them")
        keys = _read_key_file(config.key_file)
    placeholder = not keys and config.development
    if placeholder:
        keys = dict(DEV_KEYS)
    if not keys:
        raise ConfigError(
            "no API keys configured: set keys, key_file, --keys or LIVEKIT_KEYS (or use --dev)"
        )
    return dataclasses.replace(config, keys=MappingProxyType(keys)), placeholder


def _parse_keys(text: str, source: str) -> dict[str, str]:
    data = _parse_yaml(text, source)
    if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in data.values()):
        raise ConfigError(f'{source}: expected "key: secret" lines')
    return {str(k): str(v) for k, v in data.items()}


def _read_key_file(path: str) -> dict[str, str]:
    try:
        mode = os.stat(path).st_mode
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f'key_file "{path}" not found') from None
    except OSError as exc:
        raise ConfigError(f'cannot read key_file "{path}": {exc.strerror}') from None
    if mode & (stat.S_IRWXO):
        # LiveKit refuses secrets that other users can read.
        perms = stat.S_IMODE(mode)
        raise ConfigError(f'key_file "{path}" is accessible by others (mode {perms:o}); chmod 600')
    return _parse_keys(text, f'key_file "{path}"')


def _apply_dev_defaults(
    config: Config, cli: CliOverrides, user_set: Iterable[str], placeholder: bool
) -> Config:
    """LiveKit's ``--dev``: debug logs, loopback candidates, UDP port 7882 unless a port or range
    was chosen, and, with placeholder keys, listening on 127.0.0.1 only unless told otherwise."""
    if not config.development:
        return config
    chosen = set(user_set)
    rtc = config.rtc
    if not chosen & {"rtc.udp_port", "rtc.port_range_start", "rtc.port_range_end"}:
        rtc = dataclasses.replace(rtc, udp_port=7882)
    rtc = dataclasses.replace(rtc, enable_loopback_candidate=True)
    logging = config.logging
    if "logging.level" not in chosen:
        logging = dataclasses.replace(logging, level="debug")
    bind = config.bind_addresses
    if placeholder and not bind:
        bind = ("127.0.0.1",)
    return dataclasses.replace(config, rtc=rtc, logging=logging, bind_addresses=bind)


def _validate(config: Config) -> list[str]:
    """Refuse what cannot work; return warnings for what merely looks wrong."""
    ports = {"port": config.port, "rtc.tcp_port": config.rtc.tcp_port}
    ports.update({"rtc.port_range_start": config.rtc.port_range_start})
    ports.update({"rtc.port_range_end": config.rtc.port_range_end})
    for name, value in ports.items():
        if not 1 <= value <= 65535:
            raise ConfigError(f"{name}: {value} is not a port number (1-65535)")
    if not 0 <= config.rtc.udp_port <= 65535:
        raise ConfigError(f"rtc.udp_port: {config.rtc.udp_port} is not a port number")
    if config.rtc.port_range_start > config.rtc.port_range_end:
        raise ConfigError("rtc.port_range_start is greater than rtc.port_range_end")
    if config.logging.level.lower() not in _LEVELS:
        raise ConfigError(f'logging.level: unknown level "{config.logging.level}"')
    if config.node_selector.kind not in _SELECTORS:
        raise ConfigError(f'node_selector.kind: unknown kind "{config.node_selector.kind}"')
    if config.webhook.api_key and config.webhook.api_key not in config.keys:
        raise ConfigError(f'webhook.api_key "{config.webhook.api_key}" is not one of keys')
    if config.development:
        return []
    return [
        f'secret of API key "{key}" is shorter than 32 characters; use a longer one'
        for key, secret in config.keys.items()
        if len(secret) < 32
    ]
