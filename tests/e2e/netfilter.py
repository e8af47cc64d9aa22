"""nftables tables for one test, inside the test namespace: drop, blackout, rewrite."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator, Sequence

import pytest

from tests.e2e.harness import IN_NETNS

#: Tests that change the namespace's packet filtering.
needs_nftables = pytest.mark.skipif(
    not IN_NETNS or shutil.which("nft") is None,
    reason="needs the test network namespace and nftables (tests/run.sh sets both up)",
)


@contextlib.contextmanager
def nft_table(
    family: str, name: str, hook: str, priority: int, rules: Sequence[str]
) -> Iterator[None]:
    """A table with one chain on ``hook`` holding ``rules``, removed when the block ends."""
    commands = [
        f"add table {family} {name}",
        f"add chain {family} {name} main {{ type filter hook {hook} priority {priority} ; }}",
        *(f"add rule {family} {name} main {rule}" for rule in rules),
    ]
    for command in commands:
        subprocess.run(["nft", command], check=True)
    try:
        yield
    finally:
        subprocess.run(["nft", "delete", "table", family, name], check=True)


def udp_dropped(port: int) -> contextlib.AbstractContextManager[None]:
    """Drop UDP to ``port``."""
    return nft_table("inet", f"lkpy_drop_{port}", "input", 0, [f"udp dport {port} drop"])


def blackout(*ports: int) -> contextlib.AbstractContextManager[None]:
    """Drop every packet to and from ``ports``, TCP and UDP."""
    listed = ", ".join(str(p) for p in ports)
    rules = [
        f"meta l4proto {{ tcp, udp }} th dport {{ {listed} }} drop",
        f"meta l4proto {{ tcp, udp }} th sport {{ {listed} }} drop",
    ]
    return nft_table("inet", "lkpy_blackout", "input", 0, rules)


def moved_to(address: str, udp_port: int) -> contextlib.AbstractContextManager[None]:
    """From now on the clients' UDP to the server's port arrives from ``address`` (a NAT
    rebinding, rewritten statelessly before conntrack); the server's packets to the old
    address are dropped, so media flows only once the server has followed the client."""
    rules = [
        f"udp sport {udp_port} ip daddr 127.0.0.1 drop",
        f"udp sport {udp_port} ip daddr {address} ip daddr set 127.0.0.1",
        f"udp dport {udp_port} ip saddr 127.0.0.1 ip saddr set {address}",
    ]
    return nft_table("ip", "lkpy_move", "output", -300, rules)


def rtp_stream_dropped(udp_port: int, ssrc: int) -> contextlib.AbstractContextManager[None]:
    """Drop the RTP stream ``ssrc`` on its way to the server's ``udp_port`` (SRTP leaves the
    RTP header in clear: the SSRC is bytes 8-11 after the 8-byte UDP header)."""
    rule = f"udp dport {udp_port} @th,128,32 {ssrc} drop"
    return nft_table("inet", f"lkpy_drop_ssrc_{ssrc}", "input", 0, [rule])
