"""The ICE servers handed to clients: STUN, TURN with static or time-limited credentials, and
a client's TLS preference."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from pathlib import Path

import pytest

from config import CliOverrides, Config, ConfigError, load_config
from signaling.ice_servers import MAX_TURN_TTL_S, ice_servers, turn_credentials

KEYS = "keys:\n  k: a-secret-that-is-at-least-32-characters\n"
NOW = 1_800_000_000.0


def _config(turn: str, extra: str = "") -> Config:
    body = KEYS + "rtc:\n  stun_servers: [stun.example.com:3478]\n  turn_servers:\n" + turn + extra
    return load_config(dataclasses.replace(CliOverrides(), config_body=body), {}).config


TURN = """    - {host: turn.example.com, port: 3478, protocol: udp, secret: s3cret, ttl: 600}
    - {host: turn.example.com, port: 443, protocol: tls, username: u, credential: c}
    - {host: turn.example.com, port: 3479, protocol: tcp, username: u, credential: c}
"""


def test_turn_and_stun_servers_with_their_credentials() -> None:
    servers, relay = ice_servers(_config(TURN), "PA_x", "", NOW)
    assert not relay
    urls = [list(s.urls) for s in servers]
    assert urls == [
        ["turn:turn.example.com:3478?transport=udp"],
        ["turns:turn.example.com:443?transport=tcp"],
        ["turn:turn.example.com:3479?transport=tcp"],
        ["stun:stun.example.com:3478"],
    ]
    rest = servers[0]
    assert rest.username == f"{int(NOW) + 600}:PA_x"
    expected = hmac.new(b"s3cret", rest.username.encode(), hashlib.sha1).digest()
    assert rest.credential == base64.b64encode(expected).decode()
    assert (servers[1].username, servers[1].credential) == ("u", "c")


def test_a_tls_preference_gets_the_tls_servers_only_and_relays() -> None:
    servers, relay = ice_servers(_config(TURN), "PA_x", "tls", NOW)
    assert relay
    assert [list(s.urls) for s in servers] == [["turns:turn.example.com:443?transport=tcp"]]
    # Without a TLS TURN server there is nothing to relay through: the usual list.
    udp_only = _config("    - {host: t, port: 3478, protocol: udp, secret: s}\n")
    servers, relay = ice_servers(udp_only, "PA_x", "tls", NOW)
    assert not relay and len(servers) == 2


def test_credentials_never_live_longer_than_a_day() -> None:
    username, _ = turn_credentials("s", "PA_x", 10 * MAX_TURN_TTL_S, NOW)
    assert username == f"{int(NOW) + MAX_TURN_TTL_S}:PA_x"


def test_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "turn-secret"
    secret.write_text("from-file\n")
    config = _config(f"    - {{host: t, port: 3478, secret_file: {secret}}}\n")
    (server, _stun), _ = ice_servers(config, "PA_x", "", NOW)
    expected = hmac.new(b"from-file", server.username.encode(), hashlib.sha1).digest()
    assert server.credential == base64.b64encode(expected).decode()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{port: 3478, secret: s}", "host is empty"),
        ("{host: t, port: 70000, secret: s}", "not a port number"),
        ("{host: t, port: 3478, protocol: dtls, secret: s}", "not udp, tcp or tls"),
        ("{host: t, port: 3478}", "set secret, secret_file, or username and credential"),
    ],
)
def test_unusable_turn_servers_are_refused(entry: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(f"    - {entry}\n")
