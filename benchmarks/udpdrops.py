"""Run a command and watch the kernel's UDP receive drops meanwhile (``/proc/net/udp``, the
last column: datagrams a socket's full receive buffer, or its filter, refused).

Every sample records each socket's drops by inode; a socket seen dropping is traced to the
process holding it (``/proc/*/fd``), so the server's drops are told from the load tester's.
Run it in the same network namespace as the benchmark it watches, e.g.

    unshare -n sh tests/netns.sh .venv/bin/python -m benchmarks.udpdrops -- \\
        .venv/bin/python -m benchmarks.scenarios --duration 10
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def sockets() -> dict[int, tuple[int, int]]:
    """inode -> (local port, drops) of every UDP socket of this network namespace."""
    found = {}
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        found[int(fields[9])] = (int(fields[1].rsplit(":", 1)[1], 16), int(fields[12]))
    return found


def owner(inode: int) -> str:
    """Who holds socket ``inode``: "server", "load tester", or a command line."""
    target = f"socket:[{inode}]"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == target:
                    args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    if "load-test" in args or "multiprocessing" in args:
                        return "load tester"
                    if "livekit-py-server" in args or "server.cli" in args:
                        return "server"
                    return args[:80]
        except OSError:
            continue
    return "gone"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    child = subprocess.Popen(command)
    drops: dict[int, tuple[int, int]] = {}
    owners: dict[int, str] = {}
    while child.poll() is None:
        for inode, (port, count) in sockets().items():
            drops[inode] = (port, max(count, drops.get(inode, (port, 0))[1]))
            if count and inode not in owners:
                owners[inode] = owner(inode)
        time.sleep(args.interval)
    totals: dict[str, int] = {}
    for inode, (_port, count) in drops.items():
        if count:
            totals[owners.get(inode, "gone")] = totals.get(owners.get(inode, "gone"), 0) + count
    print(f"UDP sockets watched: {len(drops)}", file=sys.stderr)
    for name in ("server", "load tester"):
        totals.setdefault(name, 0)
    for name, count in sorted(totals.items()):
        sockets_dropping = sum(1 for i, (_, c) in drops.items() if c and owners.get(i) == name)
        print(f"UDP receive drops, {name}: {count} ({sockets_dropping} sockets)", file=sys.stderr)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
