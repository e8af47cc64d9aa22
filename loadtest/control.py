"""Who decides when the measurement window opens and closes, in one process or over
``--workers`` processes (multiprocessing, spawned: no event loop is forked).

The :class:`Coordinator` is sans-IO: fed the summed progress and the time, it opens the window
once every participant has joined or failed (or the ramp's deadline passed) and closes it
``--duration`` later, or on Ctrl-C. The server's CPU time is read at both moments.
"""

from __future__ import annotations

import asyncio
import enum
import multiprocessing
import queue
import signal
import time
from dataclasses import asdict
from multiprocessing.synchronize import Event
from typing import Any

from loadtest import procstat
from loadtest.params import Params, TesterSpec
from loadtest.report import Progress, ProgressPrinter
from loadtest.runner import ProcessOutcome, ProcessRun, WorkerPlan, run_loop
from loadtest.stats import TesterResult, WindowCounts

#: Seconds after the ramp's last slot (plus the join timeout) before the window opens anyway.
RAMP_GRACE_S = 5.0
START_DELAY_S = 0.5
#: How long the parent waits for a worker's message before checking the workers are alive.
REPORT_TIMEOUT_S = 0.5


class Phase(enum.Enum):
    JOINING = "joining"
    RUNNING = "running"
    DONE = "done"


class Coordinator:
    """The run's phases from the participants' progress."""

    def __init__(self, params: Params, now: float) -> None:
        self.total = params.participants
        self.duration = params.duration
        ramp = self.total / params.num_per_second
        self.join_deadline = now + START_DELAY_S + ramp + params.join_timeout + RAMP_GRACE_S
        self.phase = Phase.JOINING
        self.window_start = 0.0
        self.interrupted = False

    def update(self, progress: Progress, now: float) -> Phase | None:
        """The phase entered now, if any."""
        if self.phase is Phase.JOINING and (
            progress.settled >= self.total or now >= self.join_deadline or self.interrupted
        ):
            self.phase = Phase.RUNNING
            self.window_start = now
            return self.phase
        if self.phase is Phase.RUNNING and (
            self.interrupted or (self.duration and now - self.window_start >= self.duration)
        ):
            self.phase = Phase.DONE
            return self.phase
        return None

    def fraction(self, progress: Progress, now: float) -> float:
        if self.phase is Phase.JOINING:
            return progress.settled / self.total if self.total else 1.0
        if not self.duration:
            return 0.0
        return (now - self.window_start) / self.duration


class ServerCpu:
    """The server's CPU seconds at the window's start and end (``--server-pid``)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._start: float | None = None
        self.seconds: float | None = None

    def sample(self, phase: Phase) -> None:
        if self.pid is None:
            return
        try:
            value = procstat.cpu_seconds(self.pid)
        except ProcessLookupError:
            return
        if phase is Phase.RUNNING:
            self._start = value
        elif self._start is not None:
            self.seconds = value - self._start


class LocalControl:
    """Everything in this process: the coordinator runs inside ``report``."""

    def __init__(self, params: Params, printer: ProgressPrinter) -> None:
        self.coordinator = Coordinator(params, time.monotonic())
        self.cpu = ServerCpu(params.server_pid)
        self._printer = printer
        self._window = asyncio.Event()
        self._stop = asyncio.Event()

    def report(self, progress: Progress) -> None:
        now = time.monotonic()
        phase = self.coordinator.update(progress, now)
        if phase is not None:
            self.cpu.sample(phase)
            (self._window if phase is Phase.RUNNING else self._stop).set()
        fraction = self.coordinator.fraction(progress, now)
        self._printer.show(progress, self.coordinator.phase.value, fraction, now)

    async def wait_window(self) -> None:
        await self._window.wait()

    async def wait_stop(self) -> None:
        await self._stop.wait()


def run_local(
    params: Params, specs: list[TesterSpec], printer: ProgressPrinter
) -> tuple[list[TesterResult], WindowCounts, float | None]:
    control = LocalControl(params, printer)
    plan = WorkerPlan(params, tuple(specs), time.time() + START_DELAY_S)

    async def main() -> ProcessOutcome:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, _interrupt, control)
        try:
            return await ProcessRun(plan, control).run()
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    outcome = run_loop(main())
    printer.done()
    return outcome.testers, outcome.window, control.cpu.seconds


def _interrupt(control: LocalControl) -> None:
    control.coordinator.interrupted = True


class QueueControl:
    """A worker's side: progress up a queue, the window's moments from two events."""

    def __init__(self, index: int, out: Any, window: Event, stop: Event) -> None:
        self._index = index
        self._out = out
        self._window = window
        self._stop = stop

    def report(self, progress: Progress) -> None:
        self._out.put(("progress", self._index, asdict(progress)))

    # A multiprocessing Event cannot be awaited; polling it costs nothing at this rate.
    async def wait_window(self) -> None:
        while not self._window.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def wait_stop(self) -> None:
        while not self._stop.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def worker_main(index: int, plan: WorkerPlan, out: Any, window: Event, stop: Event) -> None:
    """A worker process: its participants, then its results up the queue."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        outcome = run_loop(ProcessRun(plan, QueueControl(index, out, window, stop)).run())
    except Exception as exc:
        out.put(("error", index, f"{type(exc).__name__}: {exc}"))
        return
    testers = [tester.to_json() for tester in outcome.testers]
    out.put(("result", index, {"testers": testers, "window": asdict(outcome.window)}))


def run_workers(
    params: Params, specs: list[TesterSpec], printer: ProgressPrinter
) -> tuple[list[TesterResult], WindowCounts, float | None]:
    """Participants spread round-robin over ``--workers`` processes; results merged."""
    count = min(params.workers, len(specs))
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    window, stop = context.Event(), context.Event()
    start = time.time() + START_DELAY_S + 1.5  # spawned interpreters need a moment
    plans = [WorkerPlan(params, tuple(specs[i::count]), start) for i in range(count)]
    processes = [
        context.Process(target=worker_main, args=(i, plan, out, window, stop), daemon=True)
        for i, plan in enumerate(plans)
    ]
    for process in processes:
        process.start()
    try:
        results, cpu = _coordinate(params, processes, out, (window, stop), printer)
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
        out.close()
        out.join_thread()
    printer.done()
    testers: list[TesterResult] = []
    merged = WindowCounts()
    for result in results:
        testers += [TesterResult.from_json(t) for t in result["testers"]]
        merged.add(WindowCounts(**result["window"]))
    return testers, merged, cpu


def _coordinate(
    params: Params,
    processes: list[Any],
    out: Any,
    events: tuple[Event, Event],
    printer: ProgressPrinter,
) -> tuple[list[dict[str, Any]], float | None]:
    coordinator = Coordinator(params, time.monotonic())
    cpu = ServerCpu(params.server_pid)
    progress_by_worker: dict[int, Progress] = {}
    results: dict[int, dict[str, Any]] = {}
    errors: list[str] = []
    while len(results) + len(errors) < len(processes):
        try:
            kind, index, body = out.get(timeout=REPORT_TIMEOUT_S)
        except queue.Empty:
            if not any(p.is_alive() for p in processes):
                raise RuntimeError("worker processes exited without results") from None
            continue
        except KeyboardInterrupt:
            coordinator.interrupted = True
            continue
        if kind == "progress":
            progress_by_worker[index] = Progress(**body)
        elif kind == "result":
            results[index] = body
        else:
            errors.append(str(body))
        total = Progress()
        for progress in progress_by_worker.values():
            total.add(progress)
        total.total = params.participants
        now = time.monotonic()
        phase = coordinator.update(total, now)
        if phase is not None:
            cpu.sample(phase)
            events[0 if phase is Phase.RUNNING else 1].set()
        printer.show(total, coordinator.phase.value, coordinator.fraction(total, now), now)
    if errors:
        raise RuntimeError("a worker failed: " + errors[0])
    return [results[i] for i in sorted(results)], cpu.seconds
