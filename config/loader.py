"""Where the configuration comes from, in LiveKit's order (``cmd/server/main.go getConfig``):
defaults < YAML file or body < environment < command-line flags; then keys, dev-mode defaults
and validation. Every problem is a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from config.build import (
    SchemaError,
    build,
    convert,
    leaf_paths,
    scalar_paths,
    shown,
    unknown_keys,
)
from config.schema import Config
from config.validate import ConfigError, validate
from config.yamlio import YamlError, parse_mapping

logger = logging.getLogger(__name__)

#: Keys whose behaviour exists (dotted prefixes); any other key a user sets to a value other
#: than its default is accepted with one warning, so nobody believes it took effect.
IMPLEMENTED_KEYS = frozenset(
    {
        "port", "bind_addresses", "development", "region", "keys", "key_file",
        "rtc.node_ip", "rtc.stun_servers", "rtc.turn_servers", "rtc.enable_loopback_candidate",
        "rtc.udp_port", "rtc.congestion_control.enabled", "rtc.congestion_control.allow_pause",
        "rtc.congestion_control.stream_allocator",
        "rtc.tcp_port", "rtc.port_range_start", "rtc.port_range_end",
        "room.auto_create", "room.empty_timeout", "room.departure_timeout",
        "room.max_participants", "room.enabled_codecs", "room.enable_remote_unmute",
        "room.max_metadata_size", "limit.max_metadata_size", "limit.max_attributes_size",
        "limit.max_participant_name_length", "limit.max_connections_per_source",
        "logging.level", "logging.json", "logging.pion_level",
        "limit.signal_message_size_limit", "limit.max_api_request_body_size",
        "limit.max_room_name_length", "limit.max_participant_identity_length",
        "webhook",
        "audio.active_level", "audio.min_percentile", "audio.update_interval",
        "audio.smooth_intervals", "video.dynacast_pause_delay",
        "prometheus_port", "prometheus",
        "redis.address", "redis.username", "redis.password", "redis.db", "redis.use_tls",
        "redis.sentinel_master_name", "redis.sentinel_username", "redis.sentinel_password",
        "redis.sentinel_addresses", "node_selector",
    }
)  # fmt: skip
#: LiveKit keys we have no schema for yet. Anything under them is accepted (so a config written
#: for livekit-server loads) and warned about; keys outside the schema and this table are errors.
LIVEKIT_ONLY_SECTIONS = frozenset(
    {
        # Top level.
        "audio.active_red_encoding", "video.stream_tracker_manager",
        "video.codec_regression_threshold", "ingress", "sip", "signal_relay", "psrpc",
        "node_stats", "agents",
        "trace", "debug_handler", "api", "metric", "environment", "enable_data_tracks",
        "enable_participant_data_blob",
        # rtc.
        "rtc.congestion_control.remote_bwe", "rtc.congestion_control.use_send_side_bwe",
        "rtc.congestion_control.use_send_side_bwe_interceptor",
        "rtc.congestion_control.send_side_bwe_pacer", "rtc.congestion_control.send_side_bwe",
        "rtc.congestion_control.stream_allocator.min_channel_capacity", "rtc.batch_io",
        "rtc.interfaces", "rtc.ips",
        "rtc.skip_external_ip_validation", "rtc.advertise_internal_ip", "rtc.external_ip_only",
        "rtc.force_tcp", "rtc.tcp_fallback_rtt_threshold", "rtc.allow_udp_unstable_fallback",
        "rtc.reconnect_on_publication_error", "rtc.reconnect_on_subscription_error",
        "rtc.reconnect_on_data_channel_error", "rtc.pli_throttle", "rtc.strict_acks",
        "rtc.packet_buffer_size", "rtc.data_channel_max_buffered_amount",
        "rtc.datachannel_slow_threshold", "rtc.datachannel_lossy_target_latency",
        "rtc.datachannel_data_track_target_latency", "rtc.forward_stats",
        "rtc.enable_rtp_stream_restart_detection", "rtc.enable_warp",
        "rtc.sctp_max_message_size", "rtc.sctp_max_receive_buffer_size",
        # room, logging, limit.
        "room.playout_delay", "room.sync_streams", "room.room_configurations",
        "room.create_room_timeout", "room.create_room_attempts",
        "room.update_batch_target_size", "room.enable_full_room_in_webhooks",
        "room.participant_disconnect_timeout", "logging.component_levels",
        "limit.agent_signal_message_size_limit", "limit.max_data_blob_key_length",
        "limit.max_data_blobs_size", "limit.max_data_track_custom_encoding_length",
        # redis, webhook, turn.
        "redis.tls", "redis.dial_timeout", "redis.read_timeout", "redis.write_timeout",
        "redis.pool_timeout", "redis.pool_size", "webhook.url_notifier", "turn.bind_addresses",
        "turn.ttl_seconds", "turn.per_user_relay_allocation_limit",
        "turn.allow_restricted_peer_cidrs", "turn.deny_peer_cidrs",
    }
)  # fmt: skip
#: Env vars LiveKit reads by name (besides the generated ``LIVEKIT_<PATH>`` ones).
NAMED_ENV = {
    "NODE_IP": "rtc.node_ip",
    "UDP_PORT": "rtc.udp_port",
    "LIVEKIT_REGION": "region",
    "REDIS_HOST": "redis.address",
    "REDIS_PASSWORD": "redis.password",
    "LIVEKIT_TURN_CERT": "turn.cert_file",
    "LIVEKIT_TURN_KEY": "turn.key_file",
}
#: LIVEKIT_* variables that are flags' env vars, not generated from a key path.
_NOT_GENERATED = {
    "LIVEKIT_CONFIG",
    "LIVEKIT_KEYS",
    "LIVEKIT_REGION",
    "LIVEKIT_TURN_CERT",
    "LIVEKIT_TURN_KEY",
}
#: Schema fields that are not keys of their own (``udp_port_end`` comes from a "N-M" udp_port).
_DERIVED = {"rtc.udp_port_end"}
_UDP_RANGE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")
# "random" is LiveKit's deprecated spelling of "any"; LiveKit configs still use it.
DEV_KEYS = {"devkey": "secret"}
DEV_UDP_PORT = 7882
_MIN_SECRET = 32


@dataclass(frozen=True)
class CliOverrides:
    """Command-line flags; ``None`` means not given."""

    config_path: str | None = None
    """``--config``: a YAML file."""
    config_body: str | None = None
    """``--config-body``: YAML text; wins over ``config_path``."""
    dev: bool = False
    """``--dev``."""
    bind: tuple[str, ...] = ()
    """``--bind``, repeatable; empty = not given."""
    port: int | None = None
    keys: str | None = None
    """``--keys``: "key: secret" lines."""
    key_file: str | None = None
    node_ip: str | None = None
    udp_port: int | None = None
    region: str | None = None
    redis_host: str | None = None
    redis_password: str | None = None


@dataclass(frozen=True)
class LoadedConfig:
    """The result of :func:`load_config`."""

    config: Config
    warnings: tuple[str, ...] = ()
    """One line each: keys accepted but not implemented yet, weak secrets."""
    dev_placeholder_keys: bool = False
    """``--dev`` supplied devkey/secret because no keys were given."""


def load_config(cli: CliOverrides, env: Mapping[str, str]) -> LoadedConfig:
    """Build the configuration from ``cli`` flags, ``env`` and the YAML they point at.

    :raises ConfigError: on anything that cannot be used, with a one-line message.
    """
    raw = _read_config(cli, env)
    _apply_env(raw, env)
    _apply_flags(raw, cli)
    user_set = set(leaf_paths(raw))
    warnings = [_not_implemented(path) for path in sorted(user_set) if _livekit_only(path)]
    _strip_livekit_only(raw)
    unknown = unknown_keys(Config, raw)
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise ConfigError(f"unknown config key{plural} " + ", ".join(unknown))
    warnings += _unknown_env_warnings(env)
    try:
        config = build(Config, raw)
    except SchemaError as exc:
        raise ConfigError(str(exc)) from None
    warnings += _unimplemented_warnings(config, user_set)
    config, placeholder = _with_keys(config, cli, env)
    config = _apply_dev_defaults(config, user_set, placeholder)
    validate(config)
    warnings += _refuse_sample_keys(config)
    warnings += _secret_warnings(config)
    warnings += _codec_warnings(config)
    logger.debug("configuration loaded: %d warnings", len(warnings))
    return LoadedConfig(config, tuple(warnings), placeholder)


def _read_config(cli: CliOverrides, env: Mapping[str, str]) -> dict[str, Any]:
    """The YAML tree: the body (flag, then LIVEKIT_CONFIG) wins over the file, as in LiveKit,
    where an empty body counts as none."""
    if cli.config_body:
        text, source = cli.config_body, "--config-body"
    elif env.get("LIVEKIT_CONFIG"):
        text, source = env["LIVEKIT_CONFIG"], "LIVEKIT_CONFIG"
    elif cli.config_path is not None:
        text, source = _read_text(cli.config_path, "config file"), f'"{cli.config_path}"'
    else:
        return {}
    raw = _parse_yaml(text, source)
    if "log_level" in raw:  # LiveKit's legacy spelling of logging.level
        level = raw.pop("log_level")
        if raw.get("logging") is None:
            raw["logging"] = {}
        if isinstance(raw["logging"], dict):  # anything else is reported by the schema
            raw["logging"].setdefault("level", level)
    _split_udp_range(raw)
    return raw


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f'{what} "{path}" not found') from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f'cannot read {what} "{path}": {reason}') from None


def _parse_yaml(text: str, source: str, *, literal: bool = False) -> dict[str, Any]:
    try:
        raw = parse_mapping(text, literal=literal)
        if not literal and isinstance(raw.get("keys"), dict):
            # Secrets are taken as written: "0123" must not become the integer 83.
            raw["keys"] = parse_mapping(text, literal=True)["keys"]
    except YamlError as exc:
        where = f" line {exc.line}" if exc.line else ""
        raise ConfigError(f"{source}{where}: {exc.problem}") from None
    return raw


def _split_udp_range(raw: dict[str, Any]) -> None:
    """``rtc.udp_port`` may be a range "7882-7892" (LiveKit's PortRange)."""
    rtc = raw.get("rtc")
    if not isinstance(rtc, dict):
        return
    if "udp_port_end" in rtc:  # a schema field, but not a LiveKit key
        raise ConfigError('unknown config key "rtc.udp_port_end"')
    if isinstance(rtc.get("udp_port"), str):
        rtc["udp_port"], rtc["udp_port_end"] = _udp_port(rtc["udp_port"], "rtc.udp_port")


def _udp_port(value: str, name: str) -> tuple[int, int]:
    match = _UDP_RANGE.fullmatch(value)
    if match is None:
        raise ConfigError(
            f'{name}: expected an integer or a range "first-last", got {shown(value)}'
        )
    return int(match[1]), int(match[2] or 0)


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
        if name in env and name not in _NOT_GENERATED and path not in _DERIVED:
            _set_from_env(raw, path, hint, name, env[name])
    for name, path in NAMED_ENV.items():
        if env.get(name):  # set but empty means unset, as with LiveKit's flag binding
            _set_from_env(raw, path, str, name, env[name])


def _set_from_env(raw: dict[str, Any], path: str, hint: Any, name: str, value: str) -> None:
    if path == "rtc.udp_port":
        first, last = _udp_port(value, name)
        _set(raw, path, first)
        _set(raw, "rtc.udp_port_end", last)  # a single port overrides a range from the file
        return
    try:
        _set(raw, path, convert(hint, value, name))
    except SchemaError as exc:
        raise ConfigError(f"environment variable {exc}") from None


def _apply_flags(raw: dict[str, Any], cli: CliOverrides) -> None:
    flags: dict[str, object | None] = {
        "port": cli.port,
        "rtc.node_ip": cli.node_ip,
        "region": cli.region,
        "redis.address": cli.redis_host,
        "redis.password": cli.redis_password,
        "key_file": cli.key_file,
    }
    for path, value in flags.items():
        if value is not None:
            _set(raw, path, value)
    if cli.udp_port is not None:
        _set(raw, "rtc.udp_port", cli.udp_port)
        _set(raw, "rtc.udp_port_end", 0)
    if cli.bind:
        raw["bind_addresses"] = list(cli.bind)
    if cli.dev:
        raw["development"] = True


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == key or path.startswith(key + ".") for key in prefixes)


def _livekit_only(path: str) -> bool:
    return _under(path, LIVEKIT_ONLY_SECTIONS)


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


_MISSING = object()


def _value_at(config: object, path: str) -> object:
    for name in path.split("."):
        if not dataclasses.is_dataclass(config):
            break  # inside a list or mapping: compare the whole container
        config = getattr(config, name, _MISSING)
    return config


def _unimplemented_warnings(config: Config, user_set: Iterable[str]) -> list[str]:
    """A warning for each schema key the user changed that has no behaviour behind it yet.

    Keys left at their default warn nothing, so a sample listing every key loads quietly.
    """
    default = Config()
    warnings = []
    for path in sorted(user_set):
        if _under(path, IMPLEMENTED_KEYS) or _livekit_only(path):
            continue
        if _value_at(config, path) == _value_at(default, path):
            continue
        if path == "rtc.udp_port_end":
            warnings.append('config key "rtc.udp_port" is a range; only its first port is used')
        else:
            warnings.append(_not_implemented(path))
    return warnings


def _with_keys(config: Config, cli: CliOverrides, env: Mapping[str, str]) -> tuple[Config, bool]:
    """API keys from ``keys``, ``--keys``/LIVEKIT_KEYS (later wins) or ``key_file``; devkey
    when in dev mode with none."""
    keys = _checked_keys(config.keys, "keys")
    if cli.keys is not None:
        keys = _parse_keys(cli.keys, "--keys")
    elif env.get("LIVEKIT_KEYS"):
        keys = _parse_keys(env["LIVEKIT_KEYS"], "LIVEKIT_KEYS")
    if config.key_file:
        if keys:
            # LiveKit refuses the ambiguity rather than picking one.
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
    data = _parse_yaml(text, source, literal=True)
    return _checked_keys(data, source)


def _checked_keys(data: Mapping[Any, Any], source: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for key, secret in data.items():
        if not isinstance(secret, str):
            raise ConfigError(f'{source}: expected "key: secret" lines, got {shown(secret)}')
        if not secret:
            raise ConfigError(f'{source}: API key "{key}" has an empty secret')
        keys[str(key)] = secret
    return keys


def _read_key_file(path: str) -> dict[str, str]:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(f'key_file "{path}" not found') from None
    except OSError as exc:
        raise ConfigError(f'cannot read key_file "{path}": {exc.strerror}') from None
    if mode & stat.S_IRWXO:
        # LiveKit refuses secrets that other users could read or replace.
        how = "readable" if mode & stat.S_IROTH else "accessible"
        perms = stat.S_IMODE(mode)
        raise ConfigError(f'key_file "{path}" is {how} by others (mode {perms:04o}); chmod 600 it')
    return _parse_keys(_read_text(path, "key_file"), f'key_file "{path}"')


def _apply_dev_defaults(config: Config, user_set: Iterable[str], placeholder: bool) -> Config:
    """LiveKit's ``--dev``: debug logs, loopback candidates, UDP port 7882 unless a port or range
    was chosen, and, with placeholder keys, listening on 127.0.0.1 only unless told otherwise.

    Only IPv4 loopback: LiveKit also binds ::1, which fails on hosts without IPv6.
    """
    if not config.development:
        return config
    chosen = set(user_set)
    rtc = dataclasses.replace(config.rtc, enable_loopback_candidate=True)
    # As LiveKit's rtcconfig: a port written as 0 is no choice, a port range written is one.
    if not rtc.udp_port and not chosen & {"rtc.port_range_start", "rtc.port_range_end"}:
        rtc = dataclasses.replace(rtc, udp_port=DEV_UDP_PORT)
    log = config.logging
    if "logging.level" not in chosen:
        log = dataclasses.replace(log, level="debug")
    bind = config.bind_addresses
    if placeholder and not bind:
        bind = ("127.0.0.1",)
    return dataclasses.replace(config, rtc=rtc, logging=log, bind_addresses=bind)


_OTHER_ENV = {
    "LIVEKIT_WORKERS",
    "LIVEKIT_PY_PURE_FANOUT",
    "LIVEKIT_URL",
    "LIVEKIT_API_KEY",
    "LIVEKIT_API_SECRET",
}


def _unknown_env_warnings(env: Mapping[str, str]) -> list[str]:
    known = {"LIVEKIT_" + path.replace(".", "_").upper() for path, _ in scalar_paths(Config)}
    known |= _NOT_GENERATED | _OTHER_ENV | set(NAMED_ENV)
    warnings = []
    for name in sorted(env):
        if name.startswith("LIVEKIT_") and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            warnings.append(f"environment variable {name} is not a setting; ignored{hint}")
    return warnings


#: The key of config-sample.yaml: a server on the network must not run with a published key.
SAMPLE_KEY = "APIkeyReplaceMe"


def _refuse_sample_keys(config: Config) -> list[str]:
    """Refused on a server others can reach; a loud warning in --dev, which is for trying."""
    if SAMPLE_KEY not in config.keys:
        return []
    loopback = config.bind_addresses and all(
        ipaddress.ip_address(address).is_loopback for address in config.bind_addresses
    )
    if loopback:
        return []
    if config.development:
        return [f'keys: "{SAMPLE_KEY}" is the published placeholder; anyone can sign tokens']
    raise ConfigError(
        f'keys: "{SAMPLE_KEY}" is config-sample.yaml\'s placeholder, published with it; '
        "make your own (livekit-py-server generate-keys), or bind to 127.0.0.1 only"
    )


def _codec_warnings(config: Config) -> list[str]:
    return [
        f"room.enabled_codecs[{index}].fmtp_line is not implemented yet: every {codec.mime} "
        "profile the publisher offers is accepted"
        for index, codec in enumerate(config.room.enabled_codecs)
        if codec.fmtp_line
    ]


def _secret_warnings(config: Config) -> list[str]:
    # LiveKit logs short secrets as an error but still starts; dev mode's "secret" is fine.
    if config.development:
        return []
    return [
        f'secret of API key "{key}" is shorter than {_MIN_SECRET} characters; use a longer one'
        for key, secret in config.keys.items()
        if len(secret) < _MIN_SECRET
    ]
