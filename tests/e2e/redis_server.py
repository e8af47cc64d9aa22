"""A real ``redis-server`` (Debian's package) on a free loopback port, for multi-node tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tests.e2e.harness import free_port


@dataclass
class RedisProcess:
    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed (tests/run.sh installs Debian's package)"
        with (self.directory / f"redis-{self.port}.log").open("ab") as log:
            self.proc = self._spawn(binary, log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._answers_ping():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} did not start")

    def _spawn(self, binary: str, log: BinaryIO) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


def start_redis(directory: Path) -> RedisProcess:
    redis = RedisProcess(free_port(), directory)
    redis.start()
    return redis
