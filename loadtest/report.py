"""What the load tester prints: a plain-text progress bar on stderr, the summary table (or
JSON) on stdout."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import TextIO

from loadtest.stats import Summary

BAR_WIDTH = 24
#: Without a terminal, one progress line per this many seconds (and at each phase change).
PLAIN_INTERVAL_S = 5.0


@dataclass
class Progress:
    """Cumulative counts of one process (or all of them, summed)."""

    joined: int = 0
    failed: int = 0
    settled: int = 0
    """Participants whose join finished, joined or not."""
    total: int = 0
    packets_in: int = 0
    octets_in: int = 0
    expected_in: int = 0
    packets_out: int = 0
    octets_out: int = 0
    audio_packets_in: int = 0
    audio_streams: int = 0
    """Audio streams that have received packets (for the rate per audio track)."""

    def add(self, other: Progress) -> None:
        self.joined += other.joined
        self.failed += other.failed
        self.settled += other.settled
        self.total += other.total
        self.packets_in += other.packets_in
        self.octets_in += other.octets_in
        self.expected_in += other.expected_in
        self.packets_out += other.packets_out
        self.octets_out += other.octets_out
        self.audio_packets_in += other.audio_packets_in
        self.audio_streams += other.audio_streams


def si(value: float, unit: str = "") -> str:
    """1234567 -> ``1.23 M``; small numbers as they are."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def _bar(fraction: float) -> str:
    filled = int(BAR_WIDTH * min(1.0, max(0.0, fraction)))
    return "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]"


class ProgressPrinter:
    """Redraws one line on a terminal; prints a line now and then otherwise."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self._out = out
        self._tty = out.isatty()
        self._last: Progress | None = None
        self._last_time = 0.0
        self._last_line = 0.0
        self._phase = ""

    def show(self, progress: Progress, phase: str, fraction: float, now: float) -> None:
        rate_in = rate_out = bits_in = 0.0
        if self._last is not None and now > self._last_time:
            elapsed = now - self._last_time
            rate_in = (progress.packets_in - self._last.packets_in) / elapsed
            rate_out = (progress.packets_out - self._last.packets_out) / elapsed
            bits_in = 8 * (progress.octets_in - self._last.octets_in) / elapsed
        self._last, self._last_time = Progress(**vars(progress)), now
        line = (
            f"{phase:<8} {_bar(fraction)} {progress.joined}/{progress.total} joined, "
            f"{progress.failed} errors | in {si(rate_in, 'pkt/s')} {si(bits_in, 'bit/s')} | "
            f"out {si(rate_out, 'pkt/s')}"
        )
        if self._tty:
            self._out.write("\r\x1b[2K" + line)
        elif phase != self._phase or now - self._last_line >= PLAIN_INTERVAL_S:
            self._out.write(line + "\n")
            self._last_line = now
        self._phase = phase
        self._out.flush()

    def done(self) -> None:
        if self._tty:
            self._out.write("\n")
            self._out.flush()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _rates(packets: int, octets: int, seconds: float) -> str:
    return f"{si(packets / seconds, 'pkt/s')}  {si(8 * octets / seconds, 'bit/s')}"


def table(summary: Summary, title: str) -> str:
    """The end-of-run table: tracks, rates in and out, loss, join latency, server CPU."""
    window = summary.window
    seconds = window.seconds or 1.0
    rows = [
        ("Participants", f"{summary.joined}/{summary.participants} joined"),
        ("Errors", str(summary.failed)),
        ("Tracks subscribed", f"{summary.tracks_received}/{summary.tracks_expected}"),
        ("Tracks with media", f"{summary.media_tracks_received}/{summary.media_tracks_expected}"),
        ("Publishers sent", _rates(window.packets_out, window.octets_out, seconds)),
        ("Subscribers received", _rates(window.packets_in, window.octets_in, seconds)),
        (
            "Packet loss",
            f"{summary.loss_percent:.3f} % ({summary.packets_lost} of "
            f"{summary.packets_received + summary.packets_lost}; "
            f"{summary.window_loss_percent:.3f} % once all had joined)",
        ),
        (
            "SRTP checked",
            f"{summary.srtp_checked} packets decrypted, {summary.srtp_errors} failed",
        ),
        (
            "Join (connected)",
            f"p50 {_ms(summary.connect_p50_ms)}  p99 {_ms(summary.connect_p99_ms)}",
        ),
        (
            "Join (first media)",
            f"p50 {_ms(summary.first_media_p50_ms)}  p99 {_ms(summary.first_media_p99_ms)}",
        ),
        ("Load tester CPU", f"{window.cpu_seconds:.2f} s over {window.seconds:.1f} s"),
    ]
    rows += _kind_rows(summary) + _server_rows(summary)
    width = max(len(name) for name, _ in rows)
    lines = [title, "-" * len(title)]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"error: {error}" for error in summary.errors[:5]]
    return "\n".join(lines)


def _kind_rows(summary: Summary) -> list[tuple[str, str]]:
    rows = []
    for kind, entry in sorted(summary.per_kind.items()):
        total = entry["packets"] + entry["lost"]
        loss = 100 * entry["lost"] / total if total else 0.0
        counts = f"{entry['tracks']:.0f} tracks, {entry['packets']:.0f} packets"
        rows.append((f"  {kind}", f"{counts}, {loss:.3f} % loss"))
    return rows


def _server_rows(summary: Summary) -> list[tuple[str, str]]:
    """Server CPU in the window, and per packet the subscribers received (``--server-pid``)."""
    cpu = summary.server_cpu_seconds
    if cpu is None:
        return []
    seconds = summary.window.seconds or 1.0
    share = f"{cpu:.2f} s over {seconds:.1f} s ({100 * cpu / seconds:.1f} % of a core)"
    rows = [("Server CPU", share)]
    per_packet = summary.server_us_per_packet
    if per_packet is not None:
        rate = 1e6 / per_packet if per_packet else 0.0
        rows.append(
            ("Server per packet", f"{per_packet:.2f} µs ({si(rate, 'packets')} per CPU-second)")
        )
    return rows


def as_json(summary: Summary) -> str:
    return json.dumps(summary.to_json(), indent=2, sort_keys=True)
