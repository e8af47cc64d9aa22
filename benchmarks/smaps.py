"""Where a process's resident memory is, by mapping (``/proc/<pid>/smaps``), and what changed
between two readings: the soak's ``--smaps`` (which mapping grew at a step of RSS).

Anonymous mappings are told apart by their neighbours, as glibc lays them out: a thread stack
sits just above its guard page (``---p``), a glibc arena other than the main one (``malloc``
from a second thread) starts on a 64 MiB boundary with the unused rest of its reservation after
it (``---p``). Every other anonymous mapping is pymalloc's 1 MiB arenas, ``malloc`` blocks of
128 KiB and more (``mmap``) or a library's own ``mmap``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

#: glibc's HEAP_MAX_SIZE on 64-bit: a non-main arena's heaps are aligned to it.
ARENA_HEAP_ALIGN = 64 << 20
PAGE = 4096
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$")


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    path: str
    """The file, ``[heap]``, ``[stack]`` ..., or empty for anonymous memory."""
    rss_kb: int
    kind: str = ""
    """What it is (:func:`classify`)."""

    @property
    def size_kb(self) -> int:
        return (self.end - self.start) // 1024


def read(pid: int) -> list[Mapping]:
    """The mappings of ``pid`` with their Rss, each with its kind."""
    mappings: list[Mapping] = []
    header: tuple[int, int, str, str] | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        match = _HEADER.match(line)
        if match:
            start, end, perms, path = match.groups()
            header = (int(start, 16), int(end, 16), perms, path.strip())
        elif line.startswith("Rss:") and header is not None:
            mappings.append(Mapping(*header, rss_kb=int(line.split()[1])))
    return classify(mappings)


def classify(mappings: list[Mapping]) -> list[Mapping]:
    """The same mappings (sorted by address), each with its kind: a file's name, ``[heap]``
    (the main glibc arena), ``thread stack``, ``glibc arena``, ``reserved`` (``---p``) or
    ``anon``."""
    ordered = sorted(mappings, key=lambda m: m.start)
    kinds: list[str] = []
    for i, m in enumerate(ordered):
        before = ordered[i - 1] if i > 0 else None
        after = ordered[i + 1] if i + 1 < len(ordered) else None
        if m.path.startswith("["):
            kind = m.path
        elif m.path:
            kind = Path(m.path).name
        elif m.perms.startswith("---"):
            kind = "reserved"
        elif (
            m.start % ARENA_HEAP_ALIGN == 0
            and after is not None
            and after.start == m.end
            and not after.path
            and after.perms.startswith("---")
        ):
            kind = "glibc arena"
        elif (
            before is not None
            and before.end == m.start
            and not before.path
            and before.perms.startswith("---")
            and before.end - before.start <= 16 * PAGE
        ):
            kind = "thread stack"
        else:
            kind = "anon"
        kinds.append(kind)
    return [
        Mapping(m.start, m.end, m.perms, m.path, m.rss_kb, kind)
        for m, kind in zip(ordered, kinds, strict=True)
    ]


def by_kind(mappings: list[Mapping]) -> Counter[str]:
    """Rss KiB per kind."""
    totals: Counter[str] = Counter()
    for m in mappings:
        totals[m.kind] += m.rss_kb
    return totals


def summary(mappings: list[Mapping], top: int = 8) -> str:
    """One line: Rss per kind, largest first, in MB."""
    totals = by_kind(mappings)
    parts = [f"{kind} {kb / 1024:.1f}" for kind, kb in totals.most_common(top) if kb]
    count = sum(1 for m in mappings if m.kind == "anon")
    return f"{' | '.join(parts)} MB; {count} anon mappings"


def changes(before: list[Mapping], after: list[Mapping], min_kb: int = 256) -> list[str]:
    """What changed by ``min_kb`` or more: per kind, then per mapping (new, gone, grown,
    shrunk), largest first."""
    lines: list[str] = []
    kinds_before, kinds_after = by_kind(before), by_kind(after)
    for kind in sorted(set(kinds_before) | set(kinds_after)):
        delta = kinds_after[kind] - kinds_before[kind]
        if abs(delta) >= min_kb:
            lines.append(f"  kind {kind}: {delta / 1024:+.2f} MB")
    old = {(m.start, m.kind): m for m in before}
    new = {(m.start, m.kind): m for m in after}
    rows: list[tuple[int, str]] = []
    for key in set(old) | set(new):
        was, now = old.get(key), new.get(key)
        delta = (now.rss_kb if now else 0) - (was.rss_kb if was else 0)
        if abs(delta) < min_kb:
            continue
        shown = now or was
        assert shown is not None
        what = "new" if was is None else "gone" if now is None else "changed"
        sizes = f"{was.size_kb if was else 0}->{now.size_kb if now else 0} KiB mapped"
        rows.append(
            (
                abs(delta),
                f"  {shown.start:012x} {shown.perms} {shown.kind}: {what}, "
                f"Rss {delta / 1024:+.2f} MB ({sizes}, Rss now {(now.rss_kb if now else 0)} KiB)",
            )
        )
    lines += [text for _, text in sorted(rows, reverse=True)]
    return lines
