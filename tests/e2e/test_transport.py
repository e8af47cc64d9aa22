"""Our own transport with the real SDK: one UDP port, a port range, ICE over TCP."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from livekit import rtc

from tests.e2e.harness import IN_NETNS, ServerProcess, free_udp_port
from tests.e2e.netfilter import needs_nftables, udp_dropped
from tests.e2e.sdk import EventLog, joined, wait_until
from tests.e2e.test_media import listening

pytestmark = pytest.mark.sdk
Start = Callable[..., ServerProcess]


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        if str(target).startswith("socket:["):
            inodes.add(str(target)[len("socket:[") : -1])
    return inodes


def tcp_established_on(pid: int, port: int) -> int:
    """How many established TCP connections the process has on local ``port``."""
    inodes = _socket_inodes(pid)
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if fields[9] in inodes and local_port == port and fields[3] == "01":  # ESTABLISHED
            count += 1
    return count


def udp_ports_of(pid: int) -> set[int]:
    """The local ports of every UDP socket the process holds (IPv4 and IPv6)."""
    inodes = _socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def _exchange(server: ServerProcess, room: str) -> tuple[rtc.Room, rtc.Room]:
    return (await _connect(server, f"{room}-a", room), await _connect(server, f"{room}-b", room))


async def _connect(server: ServerProcess, identity: str, room: str) -> rtc.Room:
    from tests.e2e.sdk import connect

    return await connect(server, identity, room)


async def _data_flows(a: rtc.Room, b: rtc.Room, payload: bytes) -> None:
    received = EventLog(b, "data_received")
    await wait_until(lambda: a.local_participant.identity in b.remote_participants)
    await a.local_participant.publish_data(payload)
    await received.wait_for(lambda p: p.data == payload)


async def test_one_udp_port_for_everything_for_a_minute(start: Start) -> None:
    udp_port = free_udp_port()
    server = start(f"rtc:\n  udp_port: {udp_port}\n", udp_port=False)
    a, b = await _exchange(server, "one-port")
    try:
        await _data_flows(a, b, b"first")
        assert udp_ports_of(server.proc.pid) == {udp_port}
        # Consent checks keep the session alive well past the 30 s consent timeout.
        await asyncio.sleep(62)
        await _data_flows(b, a, b"a minute later")
        assert a.connection_state == rtc.ConnectionState.CONN_CONNECTED
        assert udp_ports_of(server.proc.pid) == {udp_port}
    finally:
        await a.disconnect()
        await b.disconnect()


async def test_port_range_gives_each_participant_a_socket(start: Start) -> None:
    first = 45000
    config = f"rtc:\n  port_range_start: {first}\n  port_range_end: {first + 50}\n"
    server = start(config, udp_port=False)
    a, b = await _exchange(server, "range")
    try:
        await _data_flows(a, b, b"ranged")
        ports = udp_ports_of(server.proc.pid)
        assert len(ports) == 2, ports
        assert all(first <= port <= first + 50 for port in ports), ports
    finally:
        await a.disconnect()
        await b.disconnect()
    await wait_until(lambda: not udp_ports_of(server.proc.pid))


@needs_nftables
async def test_ice_tcp_when_udp_is_blocked(start: Start) -> None:
    udp_port = free_udp_port()
    server = start(f"rtc:\n  udp_port: {udp_port}\n", udp_port=False)
    with udp_dropped(udp_port):
        async with joined(server, "tcp-a", "tcp") as a, joined(server, "tcp-b", "tcp") as b:
            await _data_flows(a, b, b"over tcp")
            await _data_flows(b, a, b"and back")
            # Each participant's two peer connections run over ICE-TCP.
            assert tcp_established_on(server.proc.pid, server.tcp_port) >= 2


TURN_SECRET = "turn-test-secret"


@contextmanager
def coturn(directory: Path) -> Iterator[tuple[int, Path]]:
    """Debian's coturn on 127.0.0.1 with time-limited credentials (use-auth-secret), relaying
    to loopback peers; yields its port and log."""
    port = free_udp_port()
    relay = free_udp_port()
    log = directory / "coturn.log"
    command = [
        "turnserver", "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}",
        "--relay-ip=127.0.0.1", f"--min-port={relay}", f"--max-port={relay + 20}",
        "--use-auth-secret", f"--static-auth-secret={TURN_SECRET}", "--realm=lkpy",
        "--allow-loopback-peers", "--no-cli", "--no-tls", "--no-dtls", "--fingerprint",
        f"--pidfile={directory / 'coturn.pid'}", f"--log-file={log}", "--simple-log", "--verbose",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        yield port, log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.skipif(not IN_NETNS, reason="the SDK needs the test namespace's adapter")
async def test_media_relayed_through_coturn(start: Start, tmp_path: Path) -> None:
    """rtc.turn_servers reach the client with working time-limited credentials: an SDK that
    may only relay gets its audio to the other participant through coturn."""
    with coturn(tmp_path) as (turn_port, turn_log):
        turn = f"{{host: 127.0.0.1, port: {turn_port}, protocol: udp, secret: {TURN_SECRET}}}"
        server = start(f"rtc:\n  turn_servers:\n    - {turn}\n")
        relay_only = rtc.RoomOptions(
            rtc_config=rtc.RtcConfiguration(ice_transport_type=rtc.IceTransportType.TRANSPORT_RELAY)
        )
        async with listening(server, "turn", relay_only) as heard:
            await wait_until(lambda: len(heard.hearing.arrivals) > 20)
        logged = turn_log.read_text(errors="replace")
        assert "ALLOCATE processed, success" in logged, logged[-2000:]
