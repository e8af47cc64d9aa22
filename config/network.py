"""Addresses in the configuration: checked when it loads, parsed the same way where used."""

from __future__ import annotations

import ipaddress

REDIS_PORT = 6379


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def host_port(address: str, default_port: int = REDIS_PORT) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port``; ValueError naming what is wrong."""
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{address!r} is not host:port")
        port_text = rest[1:]
    elif address.count(":") > 1:
        if not is_ip(address):
            raise ValueError(f"{address!r} is not host:port (write an IPv6 host as [addr]:port)")
        return address, default_port
    else:
        host, _, port_text = address.partition(":")
    if not host:
        raise ValueError(f"{address!r} has no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{address!r}: port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)
