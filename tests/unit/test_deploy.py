"""deploy/docker-compose.yml without Docker: two nodes that can work together as written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from config import CliOverrides, load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return loaded


def _published(service: dict[str, Any]) -> dict[tuple[int, str], int]:
    """(container port, protocol) -> host port."""
    found = {}
    for mapping in service["ports"]:
        ports, _, protocol = mapping.partition("/")
        host, container = ports.split(":")
        found[(int(container), protocol or "tcp")] = int(host)
    return found


def test_two_nodes_share_redis_and_publish_their_own_media_ports() -> None:
    compose = _compose()
    services = compose["services"]
    nodes = [services["node1"], services["node2"]]
    body = (DEPLOY / "compose" / "livekit.yaml").read_text()
    seen_host_ports: set[int] = set()
    for node in nodes:
        assert node["build"] == ".." and node["stop_grace_period"] == "1h"
        assert "redis" in node["depends_on"]
        env = {k: str(v) for k, v in node["environment"].items()}
        env.update(LIVEKIT_KEYS=f"k: {'s' * 32}", NODE_IP="192.0.2.10")
        config = load_config(CliOverrides(config_body=body), env).config
        assert config.redis.address.split(":")[0] in services, "the Redis service"
        assert env["LIVEKIT_WORKERS"] == "1"
        published = _published(node)
        # Clients are told node_ip with the node's own ports: published 1:1.
        assert published[(config.rtc.udp_port, "udp")] == config.rtc.udp_port
        assert published[(config.rtc.tcp_port, "tcp")] == config.rtc.tcp_port
        assert (config.port, "tcp") in published
        assert not seen_host_ports & set(published.values()), "host ports overlap"
        seen_host_ports |= set(published.values())
    prometheus = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    targets = job["static_configs"][0]["targets"]
    metrics_port = load_config(
        CliOverrides(config_body=body), {"LIVEKIT_KEYS": f"k: {'s' * 32}"}
    ).config.metrics_port
    assert targets == [f"node1:{metrics_port}", f"node2:{metrics_port}"]
    mounted = [v for v in services["prometheus"]["volumes"] if "prometheus.yml" in v]
    assert mounted and Path(DEPLOY / mounted[0].split(":")[0]).exists()
