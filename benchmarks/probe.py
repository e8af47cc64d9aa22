"""What the load-test benchmarks read about a running server and the machine, all from
``/proc`` and the server's own metrics endpoint, plus running ``livekit-py-server load-test``
as a child process pinned to a core.

The load tester's progress line says ``running`` once every participant has joined (or failed);
:class:`LoadTest` watches its stderr for that so a benchmark can sample the server then.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from loadtest import procstat
from tests.e2e.harness import API_KEY, API_SECRET, SERVER_SCRIPT

SERVER_CORE, LOADER_CORE = 0, 1


def load_average() -> str:
    """``uptime``'s three load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def resident_kb(pid: int) -> int:
    """VmRSS of one process, in KiB (proc(5))."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pin(pid: int, core: int) -> None:
    """Every thread of ``pid`` onto one core."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), {core})
        except OSError:
            continue


def workers_of(supervisor: int) -> dict[int, int]:
    """Worker index -> pid of ``livekit-py-server --workers N``'s worker processes."""
    found = {}
    for pid in procstat.process_tree(supervisor)[1:]:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--worker-index" in args:
            found[int(args[args.index(b"--worker-index") + 1])] = pid
    return found


def udp_drops() -> dict[int, int]:
    """Local port -> packets the kernel dropped on that UDP socket (``/proc/net/udp``,
    summed over sockets sharing a port)."""
    drops: dict[int, int] = {}
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        port = int(fields[1].rsplit(":", 1)[1], 16)
        drops[port] = drops.get(port, 0) + int(fields[12])
    return drops


def server_udp_ports(log: str) -> list[int]:
    """The media ports the server's log says it listens on (``WebRTC on UDP port N``)."""
    ports = []
    for line in log.splitlines():
        if "WebRTC on UDP port " in line:
            ports.append(int(line.split("WebRTC on UDP port ", 1)[1].split(",")[0]))
    return ports


def load_test_command(url: str, flags: list[str], core: int | None) -> list[str]:
    command = [SERVER_SCRIPT, "load-test", "--url", url, "--api-key", API_KEY]
    command += ["--api-secret", API_SECRET, *flags, "--json"]
    return (["taskset", "-c", str(core)] if core is not None else []) + command


@dataclass
class LoadTest:
    """A ``livekit-py-server load-test`` child; :meth:`finish` gives its JSON summary."""

    command: list[str]
    proc: subprocess.Popen[str]
    running: threading.Event = field(default_factory=threading.Event)
    stderr: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @classmethod
    def start(cls, url: str, flags: list[str], core: int | None = LOADER_CORE) -> LoadTest:
        command = load_test_command(url, flags, core)
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        run = cls(command, proc)
        assert proc.stderr is not None
        run._reader = threading.Thread(target=run._read, args=(proc.stderr,), daemon=True)
        run._reader.start()
        return run

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.stderr.append(line)
            if line.startswith(("running", "done")):
                self.running.set()
        self.running.set()  # exited: nobody should wait any longer

    def interrupt(self) -> None:
        """Ctrl-C: the load tester closes its window, leaves and reports."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def wait_running(self, timeout: float) -> bool:
        return self.running.wait(timeout)

    def finish(self, timeout: float = 900.0) -> dict[str, Any]:
        stdout, _ = self.proc.communicate(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)
        try:
            summary: dict[str, Any] = json.loads(stdout)
        except ValueError:
            tail = "".join(self.stderr[-20:])
            raise RuntimeError(f"load test failed ({self.proc.returncode}): {tail}") from None
        return summary

    def shown(self) -> str:
        """The command as a user would type it (no taskset, the key as given)."""
        return " ".join(self.command[self.command.index(SERVER_SCRIPT) :])


def wait_all_running(runs: list[LoadTest], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for run in runs:
        run.wait_running(max(0.0, deadline - time.monotonic()))
