"""Starts the real server process and mints tokens with the official ``livekit-api``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livekit import api
from prometheus_client.parser import text_string_to_metric_families

API_KEY = "testkey"
API_SECRET = "testsecret-that-is-at-least-32-characters"
IN_NETNS = os.environ.get("LKPY_TEST_NETNS") == "1"
SERVER_SCRIPT = str(Path(sys.executable).parent / "livekit-py-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A running ``livekit-py-server`` and where it writes its log."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    tcp_port: int = 0
    """The ICE-TCP port the harness chose."""
    udp_port: int = 0
    """The shared media UDP port, when the harness or the test chose it."""
    metrics_port: int = 0
    """The Prometheus port, when the test's configuration set one."""

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM (the node drains), a second SIGTERM if participants are still there
        after a few seconds (rooms closed at once), then wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_server(
    log_dir: Path,
    config_yaml: str = "",
    *,
    args: tuple[str, ...] = (),
    port: int | None = None,
    with_keys: bool = True,
    node_ip: bool = True,
    udp_port: bool = True,
    extra_env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> ServerProcess:
    """Start the server with ``config_yaml`` plus our test key, and wait until it serves.

    A port the harness chose may be taken between choosing and binding (other servers and
    clients run at once): the server refuses with "already in use" and is started again on
    fresh ports, twice at most."""
    for attempt in range(3):
        try:
            return _start_once(
                log_dir, config_yaml, args, port, with_keys, node_ip, udp_port, extra_env, cwd
            )
        except RuntimeError as exc:
            if "is already in use" not in str(exc) or port is not None or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _start_once(
    log_dir: Path,
    config_yaml: str,
    args: tuple[str, ...],
    port: int | None,
    with_keys: bool,
    node_ip: bool,
    udp_port: bool,
    extra_env: dict[str, str] | None,
    cwd: Path | None,
) -> ServerProcess:
    port = port or free_port()
    body = config_yaml
    if with_keys:
        body = f"keys:\n  {API_KEY}: {API_SECRET}\n" + body
    # One process unless a test asks for workers (the default is one per CPU).
    workers = () if any(a.startswith("--workers") for a in args) else ("--workers", "1")
    cmd = [SERVER_SCRIPT, "--port", str(port), *workers, *args]
    if body:
        cmd += ["--config-body", body]
    env = dict(os.environ)
    if IN_NETNS and node_ip:
        env["NODE_IP"] = "127.0.0.1"
    env.update(extra_env or {})
    # Several servers run at once: each gets its own media ports.
    tcp_port = free_port()
    env["LIVEKIT_RTC_TCP_PORT"] = str(tcp_port)
    chosen_udp = free_udp_port() if udp_port else 0
    if chosen_udp:
        env["UDP_PORT"] = str(chosen_udp)
    log_path = log_dir / f"server-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    server = ServerProcess(proc, port, log_path, tcp_port, chosen_udp)
    wait_until_serving(server)
    if "--workers" in args:
        wait_for_workers(server, int(args[args.index("--workers") + 1]))
    return server


def wait_for_workers(server: ServerProcess, count: int, timeout: float = 20.0) -> None:
    """Until every worker has registered (the first to start would otherwise get every
    room created meanwhile)."""
    deadline = time.monotonic() + timeout
    while server.logs().count("registered (SERVING)") < count:
        if time.monotonic() > deadline or server.proc.poll() is not None:
            server.stop()
            raise RuntimeError(f"{count} workers did not start:\n{server.logs()}")
        time.sleep(0.1)


def wait_until_serving(server: ServerProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited {server.proc.returncode}:\n{server.logs()}")
        try:
            with urllib.request.urlopen(server.http_url + "/", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not start within {timeout} s:\n{server.logs()}")


def make_token(
    identity: str,
    room: str,
    *,
    name: str = "",
    metadata: str = "",
    ttl_s: int = 600,
    key: str = API_KEY,
    secret: str = API_SECRET,
    **grants: Any,
) -> str:
    video = api.VideoGrants(room_join=True, room=room, **grants)
    token = api.AccessToken(key, secret).with_identity(identity).with_grants(video)
    if name:
        token = token.with_name(name)
    if metadata:
        token = token.with_metadata(metadata)
    from datetime import timedelta

    return str(token.with_ttl(timedelta(seconds=ttl_s)).to_jwt())


def packets_out(metrics_port: int) -> float:
    """``livekit_packet_total{direction="outgoing"}`` (first sends and retransmissions) of
    one server's (or worker's) metrics endpoint."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "livekit_packet_total" and sample.labels.get("direction") == "outgoing"
    )
