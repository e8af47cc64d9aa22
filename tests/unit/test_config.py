"""Config loading: LiveKit's keys, defaults, sources in order, strictness, dev mode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config import CliOverrides, ConfigError, LoadedConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
KEYS = "keys:\n  k: a-secret-that-is-at-least-32-characters\n"


def _load(body: str = KEYS, env: dict[str, str] | None = None, **flags: object) -> LoadedConfig:
    return load_config(CliOverrides(config_body=body, **flags), env or {})  # type: ignore[arg-type]


def test_livekit_defaults() -> None:
    config = _load().config
    assert config.port == 7880
    assert config.bind_addresses == ()
    assert config.rtc.tcp_port == 7881
    assert (config.rtc.port_range_start, config.rtc.port_range_end) == (50000, 60000)
    assert config.rtc.udp_port == 0
    assert config.room.auto_create is True
    assert (config.room.empty_timeout, config.room.departure_timeout) == (300, 20)
    assert config.room.max_participants == 0
    assert config.logging.level == "info"
    assert config.limit.signal_message_size_limit == 2 * 1024 * 1024
    assert dict(config.keys) == {"k": "a-secret-that-is-at-least-32-characters"}


def test_sources_in_order(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(KEYS + "port: 1000\nrtc:\n  node_ip: 10.0.0.1\n  tcp_port: 1001\n")
    from_file = load_config(CliOverrides(config_path=str(path)), {}).config
    assert (from_file.port, from_file.rtc.node_ip) == (1000, "10.0.0.1")
    # The body wins over the file, as LiveKit's --config-body does.
    body = load_config(CliOverrides(config_path=str(path), config_body=KEYS + "port: 2000"), {})
    assert body.config.port == 2000
    env = {"NODE_IP": "10.0.0.2", "LIVEKIT_RTC_TCP_PORT": "3001", "LIVEKIT_PORT": "3000"}
    from_env = load_config(CliOverrides(config_path=str(path)), env).config
    assert (from_env.port, from_env.rtc.node_ip, from_env.rtc.tcp_port) == (3000, "10.0.0.2", 3001)
    flags = CliOverrides(config_path=str(path), port=4000, node_ip="10.0.0.3", udp_port=4001)
    from_flags = load_config(flags, env).config
    assert (from_flags.port, from_flags.rtc.node_ip, from_flags.rtc.udp_port) == (
        4000,
        "10.0.0.3",
        4001,
    )


def test_livekit_config_env_body() -> None:
    loaded = load_config(CliOverrides(), {"LIVEKIT_CONFIG": KEYS + "port: 5555"})
    assert loaded.config.port == 5555


def test_keys_from_env_and_flag() -> None:
    env = {"LIVEKIT_KEYS": "a: a-secret-that-is-at-least-32-characters\nb: other-secret"}
    assert set(load_config(CliOverrides(), env).config.keys) == {"a", "b"}
    flag = CliOverrides(keys="c: a-secret-that-is-at-least-32-characters")
    assert set(load_config(flag, env).config.keys) == {"c"}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (KEYS + "prot: 1\n", '"prot"'),
        (KEYS + "rtc:\n  udp_prot: 7882\n", '"rtc.udp_prot"'),
        (KEYS + "room:\n  auto_create: maybe\n", "room.auto_create"),
        (KEYS + "port: seven\n", "port"),
        (KEYS + "rtc: 5\n", "rtc"),
        (KEYS + "rtc:\n  stun_servers: 5\n", "rtc.stun_servers"),
        (KEYS + "logging:\n  level: loud\n", "logging.level"),
        (KEYS + "port: 70000\n", "port"),
        (KEYS + "rtc:\n  port_range_start: 9\n  port_range_end: 8\n", "port_range"),
        (KEYS + "webhook:\n  api_key: nope\n", "webhook.api_key"),
        ("- a\n- b\n", "mapping"),
        ("keys: [unclosed\n", "line"),
    ],
)
def test_errors_name_the_problem(body: str, named: str) -> None:
    with pytest.raises(ConfigError, match=None) as error:
        _load(body)
    message = str(error.value)
    assert named in message
    assert "\n" not in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(CliOverrides(config_path=str(tmp_path / "missing.yaml")), {})


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="LIVEKIT_RTC_TCP_PORT"):
        _load(env={"LIVEKIT_RTC_TCP_PORT": "many"})
    # Other programs' LIVEKIT_* variables are not ours to refuse.
    assert _load(env={"LIVEKIT_API_KEY": "x", "LIVEKIT_URL": "ws://x"}).config.port == 7880


def test_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.yaml"
    key_file.write_text("fk: a-secret-that-is-at-least-32-characters\n")
    os.chmod(key_file, 0o600)
    loaded = load_config(CliOverrides(key_file=str(key_file)), {})
    assert dict(loaded.config.keys) == {"fk": "a-secret-that-is-at-least-32-characters"}
    os.chmod(key_file, 0o644)
    with pytest.raises(ConfigError, match="accessible by others"):
        load_config(CliOverrides(key_file=str(key_file)), {})
    with pytest.raises(ConfigError, match="not found"):
        load_config(CliOverrides(key_file=str(tmp_path / "none.yaml")), {})
    os.chmod(key_file, 0o600)
    with pytest.raises(ConfigError, match="both keys and key_file"):
        load_config(CliOverrides(config_body=KEYS, key_file=str(key_file)), {})


def test_no_keys_outside_dev() -> None:
    with pytest.raises(ConfigError, match="no API keys"):
        load_config(CliOverrides(), {})


def test_dev_mode_defaults() -> None:
    loaded = load_config(CliOverrides(dev=True), {})
    config = loaded.config
    assert loaded.dev_placeholder_keys
    assert dict(config.keys) == {"devkey": "secret"}
    assert config.bind_addresses == ("127.0.0.1",)
    assert config.logging.level == "debug"
    assert config.rtc.udp_port == 7882
    assert config.rtc.enable_loopback_candidate
    assert not loaded.warnings, "short dev secrets are fine"


def test_dev_mode_respects_choices() -> None:
    exposed = load_config(CliOverrides(dev=True, bind=("0.0.0.0",)), {}).config
    assert exposed.bind_addresses == ("0.0.0.0",)
    own_keys = load_config(CliOverrides(dev=True, config_body=KEYS), {})
    assert not own_keys.dev_placeholder_keys
    assert set(own_keys.config.keys) == {"k"}
    body = "logging:\n  level: warn\nrtc:\n  port_range_start: 40000\n  port_range_end: 40100\n"
    chosen = load_config(CliOverrides(dev=True, config_body=body), {}).config
    assert chosen.logging.level == "warn"
    assert chosen.rtc.udp_port == 0


def test_unimplemented_keys_warn_once() -> None:
    loaded = _load(KEYS + "turn:\n  enabled: true\naudio:\n  active_level: 30\n")
    assert loaded.config.turn.enabled
    assert sum("turn.enabled" in w for w in loaded.warnings) == 1
    assert sum("audio.active_level" in w for w in loaded.warnings) == 1
    assert not [w for w in _load().warnings]


def test_legacy_and_range_forms() -> None:
    config = _load(KEYS + "log_level: warn\nrtc:\n  udp_port: 7882-7892\n").config
    assert config.logging.level == "warn"
    assert (config.rtc.udp_port, config.rtc.udp_port_end) == (7882, 7892)
    assert _load(env={"UDP_PORT": "9000"}).config.rtc.udp_port == 9000


def test_short_secret_is_a_warning() -> None:
    loaded = _load("keys:\n  k: short\n")
    assert any("shorter than 32" in w for w in loaded.warnings)


def test_prometheus_port_either_key() -> None:
    assert _load(KEYS + "prometheus_port: 6789\n").config.metrics_port == 6789
    assert _load(KEYS + "prometheus:\n  port: 6790\n").config.metrics_port == 6790


def test_sample_config_loads() -> None:
    sample = (ROOT / "config-sample.yaml").read_text()
    loaded = load_config(CliOverrides(config_body=sample), {})
    assert loaded.config.port == 7880
    assert loaded.config.keys
    assert not loaded.warnings, loaded.warnings
