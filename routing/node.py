"""A node of the cluster as the others see it, and the choice of a node for a new room.

LiveKit keeps ``livekit.Node`` protobufs in the Redis ``nodes`` hash. That message lives in
``livekit_internal.proto``, which the ``livekit-protocol`` package does not ship, so nodes are
stored as JSON objects with the same field names (``routing/store.py``); rooms and
participants are protobuf as in LiveKit.
"""

from __future__ import annotations

import enum
import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from config.schema import NodeSelectorConfig, RegionConfig

#: A node is alive while its stats are younger than this (LiveKit ``selector/utils.go``).
NODE_ALIVE_S = 5.0
#: How often a node refreshes its entry (LiveKit ``node_stats.stats_update_interval``).
STATS_INTERVAL_S = 2.0


class NodeState(enum.StrEnum):
    """``livekit.NodeState``."""

    STARTING_UP = "STARTING_UP"
    SERVING = "SERVING"
    SHUTTING_DOWN = "SHUTTING_DOWN"


@dataclass(frozen=True)
class NodeStats:
    """The subset of ``livekit.NodeStats`` we measure."""

    updated_at: float = 0.0
    """Unix seconds of this sample."""
    num_rooms: int = 0
    num_clients: int = 0
    num_tracks_in: int = 0
    num_tracks_out: int = 0
    packets_in_per_sec: float = 0.0
    packets_out_per_sec: float = 0.0
    bytes_in_per_sec: float = 0.0
    bytes_out_per_sec: float = 0.0
    load_avg_last1min: float = 0.0
    cpu_load: float = 0.0
    """Share of this node's process CPU in use, 0..1 (one process uses at most one core)."""


@dataclass(frozen=True)
class NodeInfo:
    """One node: where media reaches it and how busy it is."""

    id: str
    ip: str = ""
    """Address advertised to clients for media."""
    num_cpus: int = 1
    region: str = ""
    state: NodeState = NodeState.STARTING_UP
    stats: NodeStats = field(default_factory=NodeStats)
    version: str = ""

    def alive(self, now: float) -> bool:
        return now - self.stats.updated_at < NODE_ALIVE_S

    def sysload(self) -> float:
        return self.stats.load_avg_last1min / max(self.num_cpus, 1)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> NodeInfo:
        """Raises ValueError for anything that is not a node entry."""
        obj = json.loads(data)
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise ValueError("node entry must be an object with a string id")
        stats_obj = obj.get("stats") or {}
        try:
            stats = NodeStats(**stats_obj)
            return cls(
                id=obj["id"],
                ip=str(obj.get("ip", "")),
                num_cpus=int(obj.get("num_cpus", 1)),
                region=str(obj.get("region", "")),
                state=NodeState(obj.get("state", NodeState.STARTING_UP)),
                stats=stats,
                version=str(obj.get("version", "")),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad node entry: {exc}") from None

    def with_stats(self, stats: NodeStats) -> NodeInfo:
        return replace(self, stats=stats)


class NoNodeError(Exception):
    """No alive, serving node can take a new room."""


_SORT_KEYS = {
    "sysload": lambda n: n.sysload(),
    "cpuload": lambda n: n.stats.cpu_load,
    "rooms": lambda n: n.stats.num_rooms,
    "clients": lambda n: n.stats.num_clients,
    "tracks": lambda n: n.stats.num_tracks_in + n.stats.num_tracks_out,
    "bytespersec": lambda n: n.stats.bytes_in_per_sec + n.stats.bytes_out_per_sec,
}


def select_node(
    nodes: Sequence[NodeInfo],
    config: NodeSelectorConfig,
    *,
    now: float,
    current_region: str = "",
    rng: random.Random | None = None,
) -> NodeInfo:
    """The node for a new room (LiveKit ``roomallocator.go SelectRoomNode`` and ``selector/``).

    Only alive SERVING nodes qualify. ``sysload``/``cpuload`` keep nodes under their limit
    (all of them when none is); ``regionaware`` keeps the nodes of the region nearest to
    ``current_region``; then ``sort_by`` orders them and ``algorithm`` picks.
    """
    rng = rng or random.Random()
    candidates = [n for n in nodes if n.alive(now) and n.state is NodeState.SERVING]
    if not candidates:
        raise NoNodeError("no available nodes")
    kind = "any" if config.kind == "random" else config.kind
    if kind == "sysload":
        candidates = [n for n in candidates if n.sysload() < config.sysload_limit] or candidates
    elif kind == "cpuload":
        under = [n for n in candidates if n.stats.cpu_load < config.cpu_load_limit]
        candidates = under or candidates
    elif kind == "regionaware":
        candidates = _nearest_region(candidates, config.regions, current_region)
    return _pick(candidates, config, rng)


def _pick(candidates: list[NodeInfo], config: NodeSelectorConfig, rng: random.Random) -> NodeInfo:
    key = _SORT_KEYS.get(config.sort_by)
    if key is None:  # "random"
        return rng.choice(candidates)
    if config.algorithm == "twochoice" and len(candidates) > 1:
        # Power of two choices: the better of two random nodes, which spreads a burst of new
        # rooms instead of sending all of them to the one least-loaded node.
        first, second = rng.sample(candidates, 2)
        return first if key(first) <= key(second) else second
    return min(candidates, key=key)


def _nearest_region(
    candidates: list[NodeInfo], regions: Sequence[RegionConfig], current_region: str
) -> list[NodeInfo]:
    by_name = {r.name: r for r in regions}
    origin = by_name.get(current_region)
    if origin is None:
        return candidates
    located = [(n, by_name[n.region]) for n in candidates if n.region in by_name]
    if not located:
        return candidates
    distances = {n.id: _haversine_km(origin, region) for n, region in located}
    nearest = min(distances.values())
    return [n for n, _ in located if distances[n.id] == nearest]


def _haversine_km(a: RegionConfig, b: RegionConfig) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(math.sqrt(h))
