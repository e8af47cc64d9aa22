"""Cancelling tasks that lose a cancellation (Python 3.11 ``wait_for``, aiortc's handshake)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sfu import tasks
from sfu.tasks import TaskSet, cancel_and_wait


async def _swallows_once() -> None:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        pass  # lost, as wait_for loses one that races with its inner future
    await asyncio.sleep(30)


async def _swallows_until(released: asyncio.Event) -> None:
    while not released.is_set():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            continue


async def test_a_lost_cancellation_is_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "CANCEL_WAIT_S", 0.05)
    task = asyncio.get_running_loop().create_task(_swallows_once())
    await asyncio.sleep(0)
    assert await cancel_and_wait(task)
    assert task.cancelled()


async def test_a_task_that_never_stops_does_not_hang_the_caller(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tasks, "CANCEL_WAIT_S", 0.05)
    released = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = loop.create_task(_swallows_until(released), name="stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING):
        assert not await cancel_and_wait(task)
    assert "stubborn ignored 3 cancellations" in caplog.text
    assert not task.done()
    released.set()
    assert await cancel_and_wait(task)


async def test_task_set_close_ends_a_task_that_lost_a_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "CANCEL_WAIT_S", 0.05)
    owned = TaskSet(logging.getLogger("test"))
    owned.spawn(_swallows_once(), name="once")
    await asyncio.sleep(0)
    await owned.close()
    assert not owned._tasks
