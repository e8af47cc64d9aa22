"""``--workers N``: one process per core, as N nodes of one cluster on this machine.

A Python process forwards on one core, so a machine is used by running several. The
supervisor starts N worker processes of this same command; each is a full node with its own
UDP and ICE-TCP port (``rtc.udp_port + index``, ``rtc.tcp_port + index``) and Prometheus port
(``prometheus.port + index``), all sharing the HTTP port (``SO_REUSEPORT``, the kernel spreads
connections). They meet in Redis: the configured one, else a ``redis-server`` the supervisor
starts on a private Unix socket (``server/local_redis.py``). A room lives in one worker;
signalling that reaches another worker is relayed to it.

Signals go to every worker: the first drains them, the second closes their rooms, a third
kills them. A worker that dies is started again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence

from config import Config
from server.local_redis import LocalRedis, redis_server_path

logger = logging.getLogger(__name__)

#: A worker that keeps dying is given up on after this many restarts within a minute.
MAX_RESTARTS_PER_MINUTE = 5
#: A worker's exit status when it could not start (a port taken since the supervisor checked,
#: Redis unreachable): starting it again would fail the same way.
EXIT_STARTUP_FAILED = 3
RESTART_DELAY_S = 1.0


def default_worker_count() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


class Supervisor:
    """Runs the workers until a signal tells them to stop and they have all exited."""

    def __init__(self, server_args: Sequence[str], config: Config, count: int) -> None:
        self._args = list(server_args)
        self._config = config
        self._count = count
        self._redis: LocalRedis | None = None
        self._signals = 0
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._restarts: dict[int, list[float]] = {}

    async def run(self) -> int:
        directory = tempfile.mkdtemp(prefix="lkpy-")
        try:
            executable = redis_server_path()
            if not self._config.redis.enabled:
                if executable is None:  # the CLI fell back to one worker before coming here
                    raise OSError("redis-server not found")
                self._redis = LocalRedis(executable, directory)
                await self._redis.start()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal)
            logger.info("starting %d workers", self._count)
            codes = await asyncio.gather(*(self._keep(i) for i in range(self._count)))
            return 0 if all(code == 0 for code in codes) else 1
        finally:
            if self._redis is not None:
                await self._redis.stop()
            shutil.rmtree(directory, ignore_errors=True)

    def _on_signal(self) -> None:
        self._signals += 1
        for proc in self._procs.values():
            if proc.returncode is None:
                if self._signals >= 3:
                    proc.kill()
                else:
                    proc.send_signal(signal.SIGTERM)

    async def _keep(self, index: int) -> int:
        """Run worker ``index``, starting it again when it dies before we were told to stop."""
        while True:
            proc = await self._spawn(index)
            self._procs[index] = proc
            code = await proc.wait()
            if self._signals:
                # Killed by the SIGTERM we forwarded before it could install its handlers
                # (still starting up): that is the stop we asked for.
                return 0 if code == -signal.SIGTERM else code
            if code == EXIT_STARTUP_FAILED:
                logger.error("worker %d could not start; stopping the others", index)
                self._on_signal()
                return code
            logger.error("worker %d exited with %d; starting it again", index, code)
            recent = [t for t in self._restarts.get(index, []) if time.monotonic() - t < 60]
            if len(recent) >= MAX_RESTARTS_PER_MINUTE:
                logger.error("worker %d keeps failing; giving up on it", index)
                return code
            self._restarts[index] = [*recent, time.monotonic()]
            await asyncio.sleep(RESTART_DELAY_S)

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        args = [
            *self._args,
            "--workers", str(self._count),
            "--worker-index", str(index),
        ]  # fmt: skip
        if self._redis is not None:
            args += ["--worker-redis", self._redis.socket_path]
        # Own session: a terminal's Ctrl-C reaches only the supervisor, which forwards it once.
        return await asyncio.create_subprocess_exec(
            # -P: the working directory is not put first on sys.path, so a worker imports the
            # installed package (with its C fan-out), not a checkout or a user's own
            # "server"/"config" folder in the directory the supervisor was started from.
            sys.executable,
            "-P",
            "-m",
            "server.cli",
            *args,
            start_new_session=True,
        )


def strip_worker_flags(args: Sequence[str]) -> list[str]:
    """The command line without the worker flags the supervisor sets itself."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--workers", "--worker-index", "--worker-redis"):
            skip = "=" not in arg
            continue
        out.append(arg)
    return out
