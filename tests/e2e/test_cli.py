"""The command line: config errors are one line and a non-zero exit; warnings are logged."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.harness import SERVER_SCRIPT, ServerProcess, free_port, start_server


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("LIVEKIT_KEYS", "LIVEKIT_CONFIG")}
    full_env.update(env or {})
    return subprocess.run(
        [SERVER_SCRIPT, "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=full_env,
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_missing_config_file(tmp_path: Path) -> None:
    line = _one_line_error(_run("--config", str(tmp_path / "nope.yaml")))
    assert "nope.yaml" in line


def test_unknown_key_is_named(tmp_path: Path) -> None:
    line = _one_line_error(_run("--config-body", "keys: {k: s}\nrtc:\n  udp_prot: 7882\n"))
    assert "rtc.udp_prot" in line


def test_no_keys_outside_dev() -> None:
    line = _one_line_error(_run())
    assert "key" in line.lower()


def test_world_readable_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.yaml"
    key_file.write_text("k: a-secret-that-is-long-enough-to-be-fine\n")
    key_file.chmod(0o644)
    line = _one_line_error(_run("--key-file", str(key_file)))
    assert "keys.yaml" in line


def test_bad_yaml(tmp_path: Path) -> None:
    line = _one_line_error(_run("--config-body", "keys: [unclosed\n"))
    assert "yaml" in line.lower() or "config" in line.lower()


def test_unimplemented_key_warns_once(tmp_path: Path) -> None:
    server: ServerProcess = start_server(tmp_path, "turn:\n  enabled: true\n")
    try:
        logs = server.logs()
        assert logs.count("turn.enabled") == 1, logs
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("flag", ["--port", "--udp-port"])
def test_non_numeric_flag(flag: str) -> None:
    result = _run(flag, "abc")
    assert result.returncode != 0
    assert flag in result.stderr


def test_generate_keys() -> None:
    result = subprocess.run(
        [SERVER_SCRIPT, "generate-keys"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    key_line, secret_line = result.stdout.splitlines()
    assert key_line.startswith("API Key: API")
    assert len(secret_line.removeprefix("API Secret: ")) >= 32


def test_create_join_token_is_accepted(tmp_path: Path) -> None:
    from livekit import api

    from tests.e2e.harness import API_KEY, API_SECRET

    keys = f"{API_KEY}: {API_SECRET}"
    result = subprocess.run(
        [SERVER_SCRIPT, "--keys", keys, "create-join-token", "--room", "r1", "--identity", "ann"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    claims = api.TokenVerifier(API_KEY, API_SECRET).verify(result.stdout.strip())
    assert claims.identity == "ann"
    assert claims.video is not None
    assert claims.video.room == "r1" and claims.video.room_join
    server = start_server(tmp_path)
    try:
        url = f"{server.http_url}/rtc/validate?access_token={result.stdout.strip()}"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
    finally:
        assert server.stop() == 0


def test_unreachable_redis_is_one_clear_line() -> None:
    # Nothing listens on port 1: start-up stops with a line, not a traceback.
    result = _run("--workers", "1", "--dev", "--config-body", "redis:\n  address: 127.0.0.1:1\n")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot reach the cluster's Redis" in result.stderr.strip().splitlines()[-1]


def test_workers_must_be_positive() -> None:
    line = _one_line_error(_run("--dev", "--workers", "0"))
    assert "--workers must be at least 1" in line
