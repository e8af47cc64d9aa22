"""One timer for every publisher of a process: which frames are due, as RTP packets.

Each :class:`MediaSource` is one RTP stream (an audio track, or one simulcast layer) looping
a clip: frame *n* is due at ``start + n * period`` with RTP timestamp ``ts0 + n * ticks``,
so timestamps stay continuous across loops and sequence numbers simply go on. A source more
than :data:`MAX_LAG_S` behind skips frames, as an encoder under load drops them, rather than
bursting. Sans-IO: :meth:`Pacer.poll` takes the time; :func:`run_pacer` is the asyncio shell.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Sequence
from typing import Protocol

from loadtest.media import Clip
from loadtest.packetizer import RtpWriter

MAX_LAG_S = 0.5
#: Longest sleep of the timer loop (it also wakes for sources added meanwhile).
IDLE_SLEEP_S = 0.02


class Packetizer(Protocol):
    @property
    def writer(self) -> RtpWriter: ...

    def frame(self, chunks: Sequence[bytes], timestamp: int) -> list[bytes]: ...


class MediaSource:
    """One stream looping a clip.

    :param chunks: the clip's frames split for this stream's packetizer.
    :param start: when frame 0 is due (the loop's clock).
    :param sink: sends one RTP packet; set by the caller (the peer connection's send).
    """

    __slots__ = (
        "_position",
        "_slot",
        "_start",
        "active",
        "chunks",
        "clip",
        "keyframe_wanted",
        "next_due",
        "packetizer",
        "paused",
        "sink",
        "skipped",
        "ts0",
    )

    def __init__(
        self,
        clip: Clip,
        chunks: Sequence[Sequence[bytes]],
        packetizer: Packetizer,
        *,
        start: float,
        ts0: int,
        sink: Callable[[bytes], object],
    ) -> None:
        self.clip = clip
        self.chunks = chunks
        self.packetizer = packetizer
        self.sink = sink
        self.ts0 = ts0
        self._start = start
        self._slot = 0
        self._position = 0
        self.next_due = start
        self.keyframe_wanted = False
        self.active = True
        self.paused = False
        """Dynacast paused this layer: its frames are skipped, its clock goes on."""
        self.skipped = 0

    def request_keyframe(self) -> None:
        """A PLI or FIR: the next frame sent is a keyframe (the clip restarts its GOP)."""
        self.keyframe_wanted = True

    def rtp_time(self, now: float) -> int:
        """The stream's RTP timestamp for the instant ``now`` (for Sender Reports)."""
        return self.ts0 + int((now - self._start) * self.clip.clock_rate)

    def skip(self, frames: int) -> None:
        self._slot += frames
        self._position = (self._position + frames) % len(self.chunks)
        self.skipped += frames
        self.next_due = self._start + self._slot * self.clip.period

    def emit(self) -> list[bytes]:
        """The packets of the frame due now (none while paused); advances to the next."""
        if self.paused:
            self.skip(1)
            self.skipped -= 1
            return []
        if self.keyframe_wanted and self.clip.keyframes:
            self.keyframe_wanted = False
            self._position = max(k for k in self.clip.keyframes if k <= self._position)
        timestamp = self.ts0 + self._slot * self.clip.frame_ticks
        packets = self.packetizer.frame(self.chunks[self._position], timestamp)
        self._position = (self._position + 1) % len(self.chunks)
        self._slot += 1
        self.next_due = self._start + self._slot * self.clip.period
        return packets


class Pacer:
    """Every source of the process in one heap ordered by due time, then by the order they
    were added (a track's simulcast layers are added highest first and share a start)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, MediaSource]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return sum(1 for _, _, source in self._heap if source.active)

    def add(self, source: MediaSource) -> None:
        heapq.heappush(self._heap, (source.next_due, next(self._order), source))

    def next_due(self) -> float | None:
        while self._heap and not self._heap[0][2].active:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def poll(self, now: float) -> list[tuple[MediaSource, list[bytes]]]:
        """The packets of every frame due at ``now``, source by source."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, source = heapq.heappop(heap)
            if not source.active:
                continue
            late = now - source.next_due
            if late > MAX_LAG_S:
                source.skip(int(late / source.clip.period))
            out.append((source, source.emit()))
            heapq.heappush(heap, (source.next_due, next(self._order), source))
        return out


async def run_pacer(pacer: Pacer) -> None:
    """Send due frames until cancelled; one wake-up per due time, none per packet."""
    loop = asyncio.get_running_loop()
    while True:
        for source, packets in pacer.poll(loop.time()):
            sink = source.sink
            for packet in packets:
                sink(packet)
        due = pacer.next_due()
        delay = IDLE_SLEEP_S if due is None else min(IDLE_SLEEP_S, due - loop.time())
        await asyncio.sleep(max(0.0, delay))
