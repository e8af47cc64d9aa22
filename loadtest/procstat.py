"""CPU time of a process and its descendants, from ``/proc`` (Linux, proc(5)).

A process's ``stat`` line counts all its threads (``utime`` and ``stime``, fields 14 and
15); worker processes are its children, found through their ``ppid`` (field 4). A worker that
exits during the window takes its time with it, so measure while the tree is steady.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def _stat_fields(pid: int, proc: Path) -> list[str] | None:
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    return text[text.rfind(")") + 2 :].split()


def _children(proc: Path) -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name), proc)
        if fields is not None and len(fields) > 1:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def process_tree(pid: int, proc: Path = PROC) -> list[int]:
    """``pid`` and every live descendant."""
    tree = _children(proc)
    found = [pid]
    index = 0
    while index < len(found):
        found += tree.get(found[index], [])
        index += 1
    return found


def own_cpu_seconds(pid: int, proc: Path = PROC) -> float:
    """User plus system CPU seconds of ``pid`` alone (its threads, not its children); 0 when
    it is gone."""
    fields = _stat_fields(pid, proc)
    if fields is None or len(fields) <= 12:
        return 0.0
    # After the name: state is field 3, so utime (14) and stime (15) are at 11, 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, proc: Path = PROC) -> float:
    """User plus system CPU seconds of ``pid``'s process tree; raises ProcessLookupError
    when ``pid`` is gone."""
    if _stat_fields(pid, proc) is None:
        raise ProcessLookupError(pid)
    return sum(own_cpu_seconds(member, proc) for member in process_tree(pid, proc))
