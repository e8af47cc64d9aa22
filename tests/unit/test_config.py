"""Config loading: LiveKit's keys, defaults, sources in order, strictness, dev mode."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from config import CliOverrides, Config, ConfigError, LoadedConfig, load_config
from config.build import scalar_paths

ROOT = Path(__file__).resolve().parents[2]
SECRET = "a-secret-that-is-at-least-32-characters"
KEYS = f"keys:\n  k: {SECRET}\n"


def _load(
    body: str = KEYS, env: Mapping[str, str] | None = None, cli: CliOverrides | None = None
) -> LoadedConfig:
    flags = dataclasses.replace(cli or CliOverrides(), config_body=body)
    return load_config(flags, env or {})


def _error(body: str, env: Mapping[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as error:
        _load(body, env)
    message = str(error.value)
    assert "\n" not in message, "errors are one line"
    return message


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "livekit.yaml"
    path.write_text(
        KEYS + "port: 1000\nregion: file\nrtc:\n  node_ip: 10.0.0.1\n  tcp_port: 1001\n"
    )
    return path


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(f"fk: {SECRET}\n")
    path.chmod(0o600)
    return path


# Defaults and sources.


def test_livekit_defaults() -> None:
    loaded = _load()
    config = loaded.config
    assert config.port == 7880
    assert config.bind_addresses == ()
    assert config.rtc.tcp_port == 7881
    assert (config.rtc.port_range_start, config.rtc.port_range_end) == (50000, 60000)
    assert config.rtc.udp_port == 0
    assert config.room.auto_create is True
    assert (config.room.empty_timeout, config.room.departure_timeout) == (300, 20)
    assert config.room.max_participants == 0
    assert [codec.mime for codec in config.room.enabled_codecs][:2] == ["audio/opus", "audio/red"]
    assert config.logging.level == "info"
    assert config.limit.signal_message_size_limit == 2 * 1024 * 1024
    assert config.limit.max_metadata_size == 512 * 1024
    assert not config.redis.enabled
    assert dict(config.keys) == {"k": SECRET}
    assert loaded.warnings == ()
    assert not loaded.dev_placeholder_keys


def test_config_is_immutable() -> None:
    config = _load().config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.keys["other"] = "x"  # type: ignore[index]


def test_sources_in_order(config_file: Path) -> None:
    from_file = load_config(CliOverrides(config_path=str(config_file)), {}).config
    assert (from_file.port, from_file.rtc.node_ip, from_file.rtc.tcp_port) == (
        1000,
        "10.0.0.1",
        1001,
    )
    # The body wins over the file, as LiveKit's --config-body does.
    both = CliOverrides(config_path=str(config_file), config_body=KEYS + "port: 2000")
    assert load_config(both, {}).config.port == 2000
    env = {"NODE_IP": "10.0.0.2", "LIVEKIT_RTC_TCP_PORT": "3001", "LIVEKIT_PORT": "3000"}
    from_env = load_config(CliOverrides(config_path=str(config_file)), env).config
    assert (from_env.port, from_env.rtc.node_ip, from_env.rtc.tcp_port) == (3000, "10.0.0.2", 3001)
    assert from_env.region == "file", "keys the environment does not name keep the file's value"
    flags = CliOverrides(config_path=str(config_file), port=4000, node_ip="10.0.0.3", region="flag")
    from_flags = load_config(flags, {**env, "LIVEKIT_REGION": "env"}).config
    assert (from_flags.port, from_flags.rtc.node_ip, from_flags.region) == (
        4000,
        "10.0.0.3",
        "flag",
    )
    assert from_flags.rtc.tcp_port == 3001


def test_livekit_config_env_body(config_file: Path) -> None:
    assert load_config(CliOverrides(), {"LIVEKIT_CONFIG": KEYS + "port: 5555"}).config.port == 5555
    # LIVEKIT_CONFIG is --config-body's variable: it wins over a file, loses to the flag.
    env = {"LIVEKIT_CONFIG": KEYS + "port: 5555"}
    assert load_config(CliOverrides(config_path=str(config_file)), env).config.port == 5555
    assert _load(KEYS + "port: 6666", env).config.port == 6666


def test_named_env_vars() -> None:
    env = {
        "NODE_IP": "192.0.2.7",
        "UDP_PORT": "9000",
        "LIVEKIT_REGION": "eu",
        "REDIS_HOST": "redis:6379",
        "REDIS_PASSWORD": "pw",
    }
    loaded = _load(env=env)
    config = loaded.config
    assert (config.rtc.node_ip, config.rtc.udp_port, config.region) == ("192.0.2.7", 9000, "eu")
    assert (config.redis.address, config.redis.password) == ("redis:6379", "pw")
    assert config.redis.enabled
    # Redis keys have behaviour now: no "not implemented" warning for them.
    assert not [w for w in loaded.warnings if "redis" in w], "redis keys are implemented"


def test_generated_env_vars() -> None:
    env = {"LIVEKIT_RTC_TCP_PORT": "9000", "LIVEKIT_ROOM_AUTO_CREATE": "false"}
    config = _load(env=env).config
    assert config.rtc.tcp_port == 9000
    assert config.room.auto_create is False
    assert _load(env={"LIVEKIT_LOGGING_JSON": "yes"}).config.logging.json is True
    assert _load(env={"LIVEKIT_RTC_UDP_PORT": "7000-7010"}).config.rtc.udp_port == 7000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LIVEKIT_RTC_TCP_PORT", "many"),
        ("LIVEKIT_ROOM_AUTO_CREATE", "maybe"),
        ("UDP_PORT", "abc"),
        ("LIVEKIT_PORT", "7.5"),
    ],
)
def test_bad_env_value_names_the_variable(name: str, value: str) -> None:
    message = _error(KEYS, {name: value})
    assert name in message
    assert f'"{value}"' in message


def test_other_programs_env_vars_are_ignored() -> None:
    # What lk and the server SDKs read, often exported in the same shell.
    env = {"LIVEKIT_API_KEY": "x", "LIVEKIT_URL": "ws://x", "LIVEKIT_API_SECRET": "y"}
    loaded = _load(env=env)
    assert loaded.config.port == 7880
    assert loaded.warnings == ()


def test_unknown_livekit_env_vars_are_warned_about() -> None:
    loaded = _load(env={"LIVEKIT_KEY_FILE_X": "y", "LIVEKIT_RTC_TCP_PROT": "1"})
    assert loaded.warnings == (
        "environment variable LIVEKIT_KEY_FILE_X is not a setting; ignored "
        "(did you mean LIVEKIT_KEY_FILE?)",
        "environment variable LIVEKIT_RTC_TCP_PROT is not a setting; ignored "
        "(did you mean LIVEKIT_RTC_TCP_PORT?)",
    )


def test_every_unknown_key_is_named_at_once_with_suggestions() -> None:
    message = _error(KEYS + "prot: 1\nrtc:\n  udp_prot: 7882\n  tcp_port: 7881\nroom:\n  xyz: 1\n")
    assert message == (
        'unknown config keys "prot" (did you mean "port"?), "rtc.udp_prot" (did you mean '
        '"rtc.udp_port"?), "room.xyz"'
    )


def test_the_sample_key_is_refused_off_loopback() -> None:
    sample = "keys:\n  APIkeyReplaceMe: secret-of-at-least-32-characters-replace-me\n"
    assert "placeholder" in _error(sample)
    assert "placeholder" in _error(sample + "bind_addresses: [0.0.0.0]\n")
    local = _load(sample + "bind_addresses: [127.0.0.1]\n")
    assert "APIkeyReplaceMe" in local.config.keys


def test_fmtp_line_is_warned_about() -> None:
    loaded = _load(KEYS + "room:\n  enabled_codecs:\n    - {mime: video/H264, fmtp_line: x=1}\n")
    assert any("fmtp_line is not implemented" in w for w in loaded.warnings)


def test_turn_cert_env_vars_fill_turn_files() -> None:
    env = {"LIVEKIT_TURN_CERT": "/c.pem", "LIVEKIT_TURN_KEY": "/k.pem"}
    turn = _load(env=env).config.turn
    assert (turn.cert_file, turn.key_file) == ("/c.pem", "/k.pem")


def test_keys_from_env_and_flag() -> None:
    env = {"LIVEKIT_KEYS": f"a: {SECRET}\nb: {SECRET}-2"}
    assert set(load_config(CliOverrides(), env).config.keys) == {"a", "b"}
    # The environment replaces the file's keys; the flag replaces both.
    assert set(_load(env=env).config.keys) == {"a", "b"}
    flag = CliOverrides(keys=f"c: {SECRET}")
    assert set(load_config(flag, env).config.keys) == {"c"}


def test_secrets_are_taken_as_written() -> None:
    secret = "0123" + "9" * 32  # YAML 1.1 would read a bare 0123... as a number
    assert load_config(CliOverrides(keys=f"k: {secret}"), {}).config.keys["k"] == secret
    assert _load(f"keys:\n  k: {secret}\n").config.keys["k"] == secret


# Strictness and error messages.


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("prot: 1\n", 'unknown config key "prot" (did you mean "port"?)'),
        ("rtc:\n  udp_prot: 7882\n",
         'unknown config key "rtc.udp_prot" (did you mean "rtc.udp_port"?)'),
        ("room:\n  enabled_codecs:\n    - mim: x\n",
         'unknown config key "room.enabled_codecs[0].mim"'),
        ("rtc:\n  udp_port_end: 3\n", 'unknown config key "rtc.udp_port_end"'),
        ("rtc:\n  tcp_port: abc\n", 'rtc.tcp_port: expected an integer, got "abc"'),
        ("rtc:\n  udp_port: abc\n",
         'rtc.udp_port: expected an integer or a range "first-last", got "abc"'),
        ("room:\n  auto_create: maybe\n", 'room.auto_create: expected true or false, got "maybe"'),
        ("rtc: 5\n", "rtc: expected a mapping, got 5"),
        ("port: true\n", "port: expected an integer, got true"),
        ("node_selector:\n  sysload_limit: high\n",
         'node_selector.sysload_limit: expected a number, got "high"'),
        ("rtc:\n  stun_servers: 5\n", "rtc.stun_servers: expected a list, got 5"),
    ],
)  # fmt: skip
def test_schema_errors_name_the_key(body: str, expected: str) -> None:
    assert _error(KEYS + body) == expected


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("logging:\n  level: loud\n", 'logging.level: unknown level "loud"'),
        ("logging:\n  pion_level: loud\n", "logging.pion_level"),
        ("port: 70000\n", "port: 70000"),
        ("port: 0\n", "port: 0"),
        ("rtc:\n  udp_port: 70000\n", "rtc.udp_port"),
        ("rtc:\n  port_range_start: 9\n  port_range_end: 8\n", "rtc.port_range_start (9)"),
        ("rtc:\n  udp_port: 7892-7882\n", "rtc.udp_port (7892)"),
        ("node_selector:\n  kind: nearest\n", "node_selector.kind"),
        ("webhook:\n  api_key: nope\n", 'webhook.api_key "nope" is not one of keys'),
    ],
)
def test_invalid_values_are_refused(body: str, named: str) -> None:
    assert named in _error(KEYS + body)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(KEYS + "rtc:\n  tcp_port: [unclosed\n")
    with pytest.raises(ConfigError, match=r'"[^"]*broken\.yaml" line \d+: ') as error:
        load_config(CliOverrides(config_path=str(path)), {})
    assert "\n" not in str(error.value)
    assert re.match(r"--config-body line 2: ", _error("a: b\nc: d: e\n"))


def test_duplicate_keys_are_refused() -> None:
    assert _error(KEYS + "port: 1\nport: 2\n") == '--config-body line 4: duplicate key "port"'


@pytest.mark.parametrize("body", ["- a\n- b\n", "just text\n", "42\n"])
def test_document_must_be_a_mapping(body: str) -> None:
    assert "expected a mapping" in _error(body)


def test_empty_document_is_defaults() -> None:
    loaded = load_config(CliOverrides(config_body="", keys=f"k: {SECRET}"), {})
    assert loaded.config.port == 7880


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as error:
        load_config(CliOverrides(config_path=str(missing)), {})
    assert str(error.value) == f'config file "{missing}" not found'


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(CliOverrides(config_path=str(tmp_path)), {})  # a directory


# Keys.


def test_key_file(key_file: Path) -> None:
    loaded = load_config(CliOverrides(key_file=str(key_file)), {})
    assert dict(loaded.config.keys) == {"fk": SECRET}
    from_yaml = _load(f"key_file: {key_file}\n")
    assert dict(from_yaml.config.keys) == {"fk": SECRET}


def test_key_file_readable_by_others_is_refused(key_file: Path) -> None:
    key_file.chmod(0o644)
    with pytest.raises(ConfigError) as error:
        load_config(CliOverrides(key_file=str(key_file)), {})
    assert str(error.value) == (
        f'key_file "{key_file}" is readable by others (mode 0644); chmod 600 it'
    )
    key_file.chmod(0o602)
    with pytest.raises(ConfigError, match="accessible by others"):
        load_config(CliOverrides(key_file=str(key_file)), {})


def test_key_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    with pytest.raises(ConfigError) as error:
        load_config(CliOverrides(key_file=str(missing)), {})
    assert str(error.value) == f'key_file "{missing}" not found'


def test_keys_and_key_file_together_are_refused(key_file: Path) -> None:
    with pytest.raises(ConfigError, match="both keys and key_file"):
        load_config(CliOverrides(config_body=KEYS, key_file=str(key_file)), {})


@pytest.mark.parametrize("keys", ["k: [a, b]", "k:", "- a"])
def test_malformed_keys_are_refused(keys: str) -> None:
    with pytest.raises(ConfigError, match="--keys"):
        load_config(CliOverrides(keys=keys), {})


def test_no_keys_outside_dev() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(CliOverrides(), {})
    assert str(error.value) == (
        "no API keys configured: set keys, key_file, --keys or LIVEKIT_KEYS (or use --dev)"
    )


def test_short_secret_is_a_warning() -> None:
    loaded = _load("keys:\n  k: short\n")
    assert loaded.warnings == (
        'secret of API key "k" is shorter than 32 characters; use a longer one',
    )
    assert loaded.config.keys["k"] == "short"
    assert _load("keys:\n  k: short\n", cli=CliOverrides(dev=True)).warnings == ()


# Dev mode.


def test_dev_mode_defaults() -> None:
    loaded = load_config(CliOverrides(dev=True), {})
    config = loaded.config
    assert loaded.dev_placeholder_keys
    assert dict(config.keys) == {"devkey": "secret"}
    assert config.bind_addresses == ("127.0.0.1",)
    assert config.logging.level == "debug"
    assert config.rtc.udp_port == 7882
    assert config.rtc.enable_loopback_candidate
    assert loaded.warnings == (), "short dev secrets are fine"
    from_yaml = load_config(CliOverrides(config_body="development: true\n"), {})
    assert from_yaml.dev_placeholder_keys
    assert from_yaml.config.rtc.udp_port == 7882


def test_dev_mode_with_bind_keeps_it() -> None:
    exposed = load_config(CliOverrides(dev=True, bind=("0.0.0.0",)), {}).config
    assert exposed.bind_addresses == ("0.0.0.0",)
    assert dict(exposed.keys) == {"devkey": "secret"}


def test_dev_mode_with_keys_keeps_them() -> None:
    own_keys = _load(cli=CliOverrides(dev=True))
    assert not own_keys.dev_placeholder_keys
    assert dict(own_keys.config.keys) == {"k": SECRET}
    # Real keys are not placeholders: no reason to hide the server on loopback.
    assert own_keys.config.bind_addresses == ()


def test_dev_mode_respects_choices() -> None:
    body = "logging:\n  level: warn\nrtc:\n  port_range_start: 40000\n  port_range_end: 40100\n"
    chosen = load_config(CliOverrides(dev=True, config_body=body), {}).config
    assert chosen.logging.level == "warn"
    assert chosen.rtc.udp_port == 0
    assert load_config(CliOverrides(dev=True, udp_port=9100), {}).config.rtc.udp_port == 9100
    assert load_config(CliOverrides(dev=True), {"UDP_PORT": "9200"}).config.rtc.udp_port == 9200
    legacy = load_config(CliOverrides(dev=True, config_body="log_level: error\n"), {})
    assert legacy.config.logging.level == "error"


# Keys accepted before they are implemented.


def test_unimplemented_key_warns_once() -> None:
    loaded = _load(KEYS + "turn:\n  enabled: true\n", {"LIVEKIT_TURN_ENABLED": "true"})
    assert loaded.config.turn.enabled
    assert loaded.warnings == ('config key "turn.enabled" is accepted but not implemented yet',)


def test_unimplemented_key_at_its_default_is_quiet() -> None:
    assert _load(KEYS + "turn:\n  enabled: false\nrtc:\n  use_mdns: false\n").warnings == ()


def test_livekit_only_sections_are_accepted_with_a_warning() -> None:
    body = KEYS + "audio:\n  active_red_encoding: true\nrtc:\n  congestion_control:\n"
    loaded = _load(body + "    use_send_side_bwe: true\nenable_data_tracks: true\n")
    assert loaded.warnings == (
        'config key "audio.active_red_encoding" is accepted but not implemented yet',
        'config key "enable_data_tracks" is accepted but not implemented yet',
        'config key "rtc.congestion_control.use_send_side_bwe" is accepted but not implemented yet',
    )
    assert 'unknown config key "audiox"' in _error(KEYS + "audiox:\n  active_level: 30\n")


def test_congestion_control_keys() -> None:
    body = "rtc:\n  congestion_control:\n    allow_pause: true\n    stream_allocator:\n"
    loaded = _load(KEYS + body + "      probe_min_bps: 100000\n      paused_min_wait: 2s\n")
    assert loaded.warnings == ()
    control = loaded.config.rtc.congestion_control
    assert control.enabled and control.allow_pause
    assert control.stream_allocator.probe_min_bps == 100000
    wrong = KEYS + body + "      probe_mode: media\n"
    assert "stream_allocator.probe_mode" in _error(wrong)
    assert "paused_min_wait" in _error(KEYS + body + "      paused_min_wait: later\n")


def test_audio_and_video_keys() -> None:
    body = "audio:\n  active_level: 30\n  update_interval: 250\nvideo:\n"
    loaded = _load(KEYS + body + "  dynacast_pause_delay: 2s\n")
    assert loaded.warnings == ()
    assert loaded.config.audio.active_level == 30
    assert loaded.config.audio.update_interval == 250
    assert loaded.config.video.dynacast_pause_delay == "2s"
    assert "video.dynacast_pause_delay" in _error(KEYS + "video:\n  dynacast_pause_delay: soon\n")
    assert "audio.update_interval" in _error(KEYS + "audio:\n  update_interval: 0\n")
    assert "audio.smooth_intervals" in _error(KEYS + "audio:\n  smooth_intervals: -1\n")


def test_udp_port_range() -> None:
    loaded = _load(KEYS + 'rtc:\n  udp_port: "7882-7892"\n')
    assert (loaded.config.rtc.udp_port, loaded.config.rtc.udp_port_end) == (7882, 7892)
    assert loaded.warnings == ('config key "rtc.udp_port" is a range; only its first port is used',)
    # A single port from the environment replaces the file's range.
    single = _load(KEYS + "rtc:\n  udp_port: 7882-7892\n", {"UDP_PORT": "9000"}).config
    assert (single.rtc.udp_port, single.rtc.udp_port_end) == (9000, 0)
    assert _load(env={"UDP_PORT": "7000-7001"}).config.rtc.udp_port_end == 7001


def test_legacy_log_level() -> None:
    loaded = _load(KEYS + "log_level: warn\n")
    assert loaded.config.logging.level == "warn"
    assert loaded.warnings == ()
    assert _load(KEYS + "log_level: warn\nlogging:\n").config.logging.level == "warn"
    assert _load(KEYS + "log_level: warn\nlogging:\n  level: error\n").config.logging.level == (
        "error"
    )


def test_empty_body_falls_back_to_the_file(config_file: Path) -> None:
    cli = CliOverrides(config_path=str(config_file), config_body="")
    assert load_config(cli, {"LIVEKIT_CONFIG": ""}).config.port == 1000


def test_prometheus_port_either_key() -> None:
    assert _load(KEYS + "prometheus_port: 6789\n").config.metrics_port == 6789
    assert _load(KEYS + "prometheus:\n  port: 6790\n").config.metrics_port == 6790


def test_codecs_and_lists() -> None:
    body = KEYS + "room:\n  enabled_codecs:\n    - mime: audio/PCMU\n    - {mime: video/H264, "
    body += 'fmtp_line: "profile-level-id=42e01f"}\nrtc:\n  stun_servers: [stun.example.com:3478]\n'
    config = _load(body).config
    assert [(c.mime, c.fmtp_line) for c in config.room.enabled_codecs] == [
        ("audio/PCMU", ""),
        ("video/H264", "profile-level-id=42e01f"),
    ]
    assert config.rtc.stun_servers == ("stun.example.com:3478",)


# The sample.


def test_sample_config_loads() -> None:
    # As published, its placeholder key is fit for a server on 127.0.0.1 or --dev only.
    path = ROOT / "config-sample.yaml"
    local = CliOverrides(config_path=str(path), bind=("127.0.0.1",))
    loaded = load_config(local, {})
    expected = dataclasses.replace(Config(), keys=loaded.config.keys, bind_addresses=("127.0.0.1",))
    assert loaded.config == expected
    assert loaded.warnings == ()
    dev = load_config(CliOverrides(config_path=str(path), dev=True), {})
    assert (dev.config.rtc.udp_port, dev.config.logging.level) == (7882, "debug")
    assert any("placeholder" in warning for warning in dev.warnings)
    with pytest.raises(ConfigError, match="placeholder"):
        load_config(CliOverrides(config_path=str(path)), {})


def test_sample_config_shows_every_key() -> None:
    text = (ROOT / "config-sample.yaml").read_text()
    for path, _hint in scalar_paths(Config):
        if path == "rtc.udp_port_end":
            continue  # derived from a "N-M" udp_port, not a key
        leaf = path.rsplit(".", 1)[-1]
        assert re.search(rf"^\s*#?\s*{leaf}:", text, re.MULTILINE), path


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("redis:\n  address: 'a:b:c:d'\n", "redis.address"),
        ("redis:\n  address: 'host:notaport'\n", "redis.address"),
        (
            "redis:\n  sentinel_addresses: ['ok:26379', 'bad:99999']\n",
            "redis.sentinel_addresses[1]",
        ),
        ("bind_addresses: [999.1.1.1]\n", "bind_addresses[0]"),
        ("bind_addresses: 127.0.0.1\n", "bind_addresses: expected a list"),
        ("rtc:\n  node_ip: not-an-ip\n", "rtc.node_ip"),
        ("room:\n  empty_timeout: -5\n", "room.empty_timeout: -5 is negative"),
        ("limit:\n  max_metadata_size: -1\n", "limit.max_metadata_size"),
    ],
)
def test_bad_addresses_and_negative_values_name_their_key(body: str, named: str) -> None:
    assert named in _error(KEYS + body)


def test_addresses_that_are_fine() -> None:
    config = _load(
        KEYS + "bind_addresses: [127.0.0.1, '::1']\nrtc:\n  node_ip: 10.0.0.1\n"
        "redis:\n  address: '[::1]:6380'\n"
    ).config
    assert config.bind_addresses == ("127.0.0.1", "::1")
