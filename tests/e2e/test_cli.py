"""The command line: config errors are one line and a non-zero exit; warnings are logged."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import tracemalloc
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.harness import (
    SERVER_SCRIPT,
    ServerProcess,
    free_port,
    start_server,
    wait_until_serving,
)


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


@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_in_use_is_one_line_and_exit_1(workers: str) -> None:
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        env = {"LIVEKIT_RTC_TCP_PORT": str(free_port()), "UDP_PORT": "0"}
        result = subprocess.run(
            [SERVER_SCRIPT, "--port", str(port), "--workers", workers, "--keys", "k: " + "s" * 32],
            capture_output=True, text=True, timeout=30, env={**os.environ, **env},
        )  # fmt: skip
    finally:
        taken.close()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"livekit-py-server: HTTP port {port} on 0.0.0.0 is already in use (another server "
        "running? choose another port or stop it)"
    )
    assert "SERVING" not in result.stderr, "nothing registers before its ports are bound"
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3


def test_help_lists_the_subcommands_and_version_is_printed() -> None:
    helped = subprocess.run([SERVER_SCRIPT, "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0
    for command in ("generate-keys", "create-join-token", "load-test"):
        assert command in helped.stdout
    version = subprocess.run([SERVER_SCRIPT, "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("livekit-py-server ")
    keys_help = subprocess.run(
        [SERVER_SCRIPT, "generate-keys", "--help"], capture_output=True, text=True
    )
    assert keys_help.returncode == 0 and "usage:" in keys_help.stdout
    assert "API Secret" not in keys_help.stdout, "help, not a key pair"


def test_global_flags_after_a_subcommand() -> None:
    result = subprocess.run(
        [SERVER_SCRIPT, "create-join-token", "--room", "r", "--identity", "i", "--dev"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(".") == 2, "a JWT"


def test_dev_mode_is_one_process_announced_once(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "dev.log"
    env = {**os.environ, "LIVEKIT_RTC_TCP_PORT": str(free_port()), "UDP_PORT": str(free_port())}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [SERVER_SCRIPT, "--dev", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
    server = ServerProcess(proc, port, log)
    try:
        wait_until_serving(server)
    finally:
        assert server.stop() == 0
    text = log.read_text()
    assert text.count(f"clients connect to ws://127.0.0.1:{port}") == 1
    assert text.count("placeholder keys: API key devkey, secret secret") == 1
    assert "starting" not in text and "worker=" not in text, "one process"
    assert "Using selector" not in text


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_worker_count_from_the_environment(value: str) -> None:
    line = _one_line_error(_run("--keys", "k: " + "s" * 32, env={"LIVEKIT_WORKERS": value}))
    assert "LIVEKIT_WORKERS" in line


def test_sigusr2_logs_objects_and_writes_a_tracemalloc_snapshot(tmp_path: Path) -> None:
    """An operator's leak probe: object counts by type, and a snapshot when started with
    PYTHONTRACEMALLOC."""
    server = start_server(tmp_path, extra_env={"PYTHONTRACEMALLOC": "1", "TMPDIR": str(tmp_path)})
    try:
        server.proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 20
        while "tracemalloc snapshot written" not in server.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "objects by type: " in server.logs()
        snapshots = list(tmp_path.glob("livekit-py-server-*"))
        assert len(snapshots) == 1
        assert tracemalloc.Snapshot.load(str(snapshots[0])).traces
    finally:
        assert server.stop() == 0
