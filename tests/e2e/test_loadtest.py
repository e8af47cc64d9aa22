"""``livekit-py-server load-test`` against our server: every track arrives, nothing is lost on
loopback, and an unreachable server or a wrong key ends the run with one clear line.

The load tester's own WebRTC client works on plain loopback (it is not libwebrtc), so these
tests need no SDK marker; the server advertises 127.0.0.1 so no traffic leaves loopback.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from tests.e2e.harness import (
    API_KEY,
    API_SECRET,
    IN_NETNS,
    SERVER_SCRIPT,
    ServerProcess,
    free_port,
    packets_out,
)

LOOPBACK = {"NODE_IP": "127.0.0.1"}


def _load_test(url: str, *args: str, secret: str = API_SECRET) -> subprocess.CompletedProcess[str]:
    command = [SERVER_SCRIPT, "load-test", "--url", url, "--api-key", API_KEY]
    return subprocess.run(
        [*command, "--api-secret", secret, *args],
        capture_output=True,
        text=True,
        timeout=240,
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def _row(table: str, name: str) -> str:
    """The value of one row of the summary table."""
    for line in table.splitlines():
        if line.startswith(name + "  "):
            return line[len(name) :].strip()
    raise AssertionError(f"no row {name!r} in:\n{table}")


@pytest.mark.timeout(300)  # the first run on a machine encodes the clips (cached after)
def test_every_subscriber_receives_every_track(start: Callable[..., ServerProcess]) -> None:
    server = start(extra_env=LOOPBACK)
    result = _load_test(
        server.ws_url,
        "--audio-publishers", "1", "--video-publishers", "1", "--subscribers", "3",
        "--duration", "5", "--json", "--server-pid", str(server.proc.pid),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads(result.stdout)
    assert (summary["participants"], summary["joined"], summary["failed"]) == (4, 4, 0)
    assert summary["tracks_expected"] == summary["tracks_received"] == 6
    assert summary["media_tracks_expected"] == summary["media_tracks_received"] == 6
    assert summary["packets_lost"] == 0, summary
    assert summary["window_loss_percent"] == 0
    assert summary["window"]["expected_in"] == summary["window"]["packets_in"]
    assert summary["srtp_errors"] == 0
    assert summary["srtp_checked"] == summary["packets_received"]  # small run: all decrypted
    # 3 subscribers x (Opus 50 packets/s + 720p VP8 well over 100 packets/s) for 5 s.
    assert summary["window"]["packets_in"] > 3 * 150 * 4
    assert summary["per_kind"]["audio"]["tracks"] == summary["per_kind"]["video"]["tracks"] == 3
    assert summary["window"]["packets_out"] > 0
    assert summary["server_cpu_seconds"] > 0
    assert summary["server_us_per_packet"] > 0
    assert 0 < summary["connect_p50_ms"] <= summary["connect_p99_ms"] < 5000
    assert "joined" in result.stderr  # the progress bar


def test_workers_share_the_participants(start: Callable[..., ServerProcess]) -> None:
    server = start(extra_env=LOOPBACK)
    result = _load_test(
        server.ws_url,
        "--audio-publishers", "2", "--subscribers", "4", "--workers", "2",
        "--duration", "3", "--num-per-second", "10",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert _row(result.stdout, "Participants") == "6/6 joined", result.stdout
    assert _row(result.stdout, "Tracks with media") == "8/8", result.stdout
    assert _row(result.stdout, "Packet loss").startswith("0.000 %"), result.stdout


def test_unreachable_server() -> None:
    line = _one_line_error(_load_test(f"ws://127.0.0.1:{free_port()}", "--subscribers", "1"))
    assert "connection refused" in line and "load-test" in line


@pytest.mark.skipif(not IN_NETNS, reason="a name lookup may leave the machine outside the netns")
def test_unknown_host() -> None:
    line = _one_line_error(_load_test("ws://no-such-host.invalid:7880", "--subscribers", "1"))
    assert "cannot resolve host 'no-such-host.invalid'" in line


def test_wrong_secret(start: Callable[..., ServerProcess]) -> None:
    server = start(extra_env=LOOPBACK)
    result = _load_test(server.ws_url, "--subscribers", "1", secret="not-the-right-secret-at-all")
    line = _one_line_error(result)
    assert "401" in line and "API key or secret" in line


def test_sink_drops_media_the_server_keeps_sending(start: Callable[..., ServerProcess]) -> None:
    metrics = free_port()
    server = start(f"prometheus_port: {metrics}\n", extra_env=LOOPBACK)
    result = _load_test(
        server.ws_url,
        "--audio-publishers", "1", "--video-publishers", "1", "--subscribers", "2",
        "--duration", "6", "--json", "--sink",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads(result.stdout)
    assert summary["media_tracks_expected"] == summary["media_tracks_received"] == 4
    assert summary["srtp_errors"] == 0
    # Each subscriber counted a second or so of media before sinking; the server sent to
    # them for the whole window (consent and receiver reports kept their sessions up).
    sent = packets_out(metrics)
    assert sent > 2 * summary["packets_received"], (sent, summary["packets_received"])
