"""The Redis that ``--workers N`` shares when no ``redis`` section is configured: Debian's
``redis-server``, started by the supervisor on a private Unix socket (no TCP port, no
persistence) and stopped with it. The workers meet there exactly as nodes meet in a
configured Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time

logger = logging.getLogger(__name__)

#: How long redis-server may take to create its socket.
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


class LocalRedis:
    """One ``redis-server`` process on ``<directory>/redis.sock``, readable by this user only."""

    def __init__(self, executable: str, directory: str) -> None:
        self._executable = executable
        self._directory = directory
        self.socket_path = os.path.join(directory, "redis.sock")
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start it and wait for its socket; OSError when it does not come up."""
        arguments = [
            "--port", "0",  # no TCP listener at all
            "--unixsocket", self.socket_path,
            "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no",  # rooms live in the workers, not on disk
            "--dir", self._directory,
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        self._proc = await asyncio.create_subprocess_exec(
            self._executable,
            *arguments,
            stdout=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C is the supervisor's to forward
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not await self._answers():
            if self._proc.returncode is not None or time.monotonic() > deadline:
                await self.stop()
                raise OSError(f"redis-server did not start (socket {self.socket_path})")
            await asyncio.sleep(0.05)
        logger.info("workers share redis-server on %s", self.socket_path)

    async def _answers(self) -> bool:
        """Whether the socket takes a connection (it exists once redis-server listens)."""
        try:
            _reader, writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
