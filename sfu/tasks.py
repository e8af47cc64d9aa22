"""A set of background tasks owned by one object, so closing the object leaks none of them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)

#: How long :func:`cancel_and_wait` waits after each cancellation.
CANCEL_WAIT_S = 1.0
CANCEL_ATTEMPTS = 3


async def cancel_and_wait(task: asyncio.Task[Any]) -> bool:
    """Cancel ``task`` and wait for it to end, cancelling again if it does not: on Python 3.11
    ``asyncio.wait_for`` (aiortc's DTLS handshake waits for datagrams with it) loses a
    cancellation that arrives as its inner wait completes, and the task runs on (CPython
    gh-86296), so an unbounded wait for it can hang a close forever. False when the task was
    still running after every attempt."""
    for _ in range(CANCEL_ATTEMPTS):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=CANCEL_WAIT_S)
        if done:
            if not task.cancelled():
                task.exception()  # retrieved: the owner is closing, the outcome is moot
            return True
    logger.warning("task %s ignored %d cancellations", task.get_name(), CANCEL_ATTEMPTS)
    return False


class TaskSet:
    """Spawns tasks, keeps a strong reference until they finish, logs their failures.

    :param log: where a task's unexpected exception is reported (with the owner's context).
    """

    def __init__(self, log: logging.Logger | logging.LoggerAdapter[logging.Logger]) -> None:
        self._log = log
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        if self._closed:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._log.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)

    async def close(self) -> None:
        """Cancel every task except the caller's own, and wait for them to end."""
        self._closed = True
        current = asyncio.current_task()
        pending = [t for t in self._tasks if t is not current]
        if pending:
            await asyncio.gather(*(cancel_and_wait(task) for task in pending))
