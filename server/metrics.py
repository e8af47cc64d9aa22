"""Prometheus metrics with LiveKit's names and labels (``pkg/telemetry/prometheus/*.go``).

Everything is read when ``/metrics`` is scraped: room, participant and track gauges from the
room manager, packet, byte, NACK and PLI counters from the node's media counters
(``sfu/counters.py``), Twirp and webhook counters from their owners. The only state kept here
is what room events and ``/rtc`` responses count (joins, publications, durations), a few
integer additions per event. Nothing runs per media packet.

Every LiveKit metric carries the const labels ``node_id`` and ``node_type``. LiveKit's local
node never sets its type, so it reports the enum's zero value, ``SERVER``
(``pkg/routing/node.go NewLocalNode``); we say the same. ``country`` is a GeoIP lookup in
LiveKit's cloud and empty in the open-source server, as here.

LiveKit's Go client writes counters under the exact name registered, and three of its counters
do not end in ``_total`` (``livekit_packet_bytes``, ``livekit_node_twirp_request_status``,
``livekit_track_publish_counter``). Python's client would append ``_total`` to a counter's
name, so those three are exposed untyped under LiveKit's names, which keeps dashboards and
alerts written for LiveKit working (``rate()`` does not look at the type).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from livekit.protocol import models
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)

from sfu.counters import NODE_COUNTERS, MediaCounters, MediaTotals
from sfu.events import EventKind, RoomEvent
from sfu.fanout import protect_failures
from sfu.guard import DROPPED
from sfu.histogram import Histogram, QualityStats, exponential_range
from sfu.ice import MALFORMED
from sfu.rooms import RoomManager

NODE_TYPE = "SERVER"
TRACK_KINDS = ("AUDIO", "VIDEO")
#: LiveKit's ``livekit_room_duration_seconds`` buckets (``rooms.go``).
#: Subscriber bandwidth estimates, bps: 100 kbps to 25 Mbps.
ESTIMATE_BUCKETS = (100e3, 150e3, 300e3, 600e3, 1.2e6, 2.5e6, 5e6, 10e6, 25e6)
ROOM_DURATION_BUCKETS = (5, 10, 60, 300, 600, 1800, 3600, 7200, 18000, 36000)
#: Close reasons LiveKit counts as a cancelled join rather than a failed one
#: (``participant.go IsConnectionCanceled``), and how soon a closed signal connection still
#: counts as the client giving up.
CANCELLED_REASONS = frozenset(
    {
        models.DisconnectReason.CLIENT_INITIATED,
        models.DisconnectReason.DUPLICATE_IDENTITY,
        models.DisconnectReason.ROOM_DELETED,
        models.DisconnectReason.ROOM_CLOSED,
    }
)
QUICK_SIGNAL_CLOSE_S = 3.0
#: The join stages we report, exported from 0 so the first of each shows in ``rate()``.
JOIN_STATES = (
    ("signal_connected", ""),
    ("signal_validation_failed", ""),
    ("signal_failed", ""),
    ("rtc_success", "false"),
    ("rtc_active", "false"),
    ("rtc_canceled", "false"),
    ("rtc_failure", "false"),
)

Sample = tuple[Sequence[str], float]
"""Label values (after the const labels) and the value of one sample."""
TwirpStats = Mapping[tuple[str, str, int, str], int]
"""(service, method, HTTP status, Twirp code or "") -> requests."""
WebhookCounts = Mapping[tuple[str, str], int]
"""(event name, "success" | "failure" | "dropped") -> deliveries."""


def _no_counts() -> Mapping[Any, int]:
    return {}


#: ``livekit_session_duration_ms`` buckets: 100 ms to 4 h in 15 steps (``rooms.go``).
SESSION_DURATION_BUCKETS = exponential_range(100, 4 * 3600 * 1000, 15)


@dataclass(frozen=True)
class MetricsSources:
    """What the collector reads at scrape time; the composition root passes these in.

    :param twirp_stats: the Twirp handler's request counts.
    :param webhook_counts: the webhook notifier's delivery counts.
    """

    rooms: RoomManager
    media: MediaCounters = NODE_COUNTERS
    twirp_stats: Callable[[], TwirpStats] = _no_counts
    webhook_counts: Callable[[], WebhookCounts] = _no_counts


class Lifecycle:
    """Counts from room events (a ``RoomObserver``) and from ``/rtc`` responses."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.joins = collections.Counter(dict.fromkeys(JOIN_STATES, 0))
        """(state, warp) -> participants, LiveKit's ``livekit_participant_join_total``."""
        self.publishes = collections.Counter({(kind, "success"): 0 for kind in TRACK_KINDS})
        """(kind, state) -> tracks, LiveKit's ``livekit_track_publish_counter``."""
        self.room_duration = Histogram(ROOM_DURATION_BUCKETS)
        self.session_duration: dict[str, Histogram] = {}
        """Protocol version -> how long active participants stayed, in ms."""

    def on_room_event(self, event: RoomEvent) -> None:
        if event.kind is EventKind.PARTICIPANT_JOINED:
            # LiveKit counts both when the primary transport first connects: rtc_success in
            # ``participant.go``, rtc_active in ``telemetry/events.go``. We have no warp.
            self.joins["rtc_success", "false"] += 1
            self.joins["rtc_active", "false"] += 1
        elif event.kind is EventKind.PARTICIPANT_CONNECTION_ABORTED and event.participant:
            self.joins[self._abort_state(event.participant), "false"] += 1
        elif event.kind is EventKind.PARTICIPANT_LEFT and event.participant:
            self._observe_session(event.participant)
        elif event.kind is EventKind.TRACK_PUBLISHED and event.track:
            self.publishes[models.TrackType.Name(event.track.type), "success"] += 1
        elif event.kind is EventKind.ROOM_FINISHED:
            created = event.room.creation_time_ms / 1000 or float(event.room.creation_time)
            if created:
                self.room_duration.observe(max(0.0, self._clock() - created))

    def _abort_state(self, participant: models.ParticipantInfo) -> str:
        """rtc_canceled when the client gave up (LiveKit's list), rtc_failure otherwise."""
        reason = participant.disconnect_reason
        stayed = self._clock() - participant.joined_at_ms / 1000
        quick_close = reason == models.DisconnectReason.SIGNAL_CLOSE and (
            stayed < QUICK_SIGNAL_CLOSE_S
        )
        return "rtc_canceled" if reason in CANCELLED_REASONS or quick_close else "rtc_failure"

    def _observe_session(self, participant: models.ParticipantInfo) -> None:
        # LiveKit measures from ACTIVE; we have the join time, a few hundred ms earlier.
        version = str(participant.client_protocol)
        histogram = self.session_duration.get(version)
        if histogram is None:
            histogram = self.session_duration[version] = Histogram(SESSION_DURATION_BUCKETS)
        histogram.observe(max(0.0, self._clock() * 1000 - participant.joined_at_ms))

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """The signal stages of ``rtcservice.go``: the WebSocket upgrade (101) is
        signal_connected, a refused join request signal_validation_failed (4xx: bad token,
        unknown room) or signal_failed (5xx: the room could not take the participant); on both
        join paths."""
        if request.path not in ("/rtc", "/rtc/v1"):
            return
        if response.status == 101:
            self.joins["signal_connected", ""] += 1
        elif 400 <= response.status < 500:
            self.joins["signal_validation_failed", ""] += 1
        elif response.status >= 500:
            self.joins["signal_failed", ""] += 1


def twirp_status_family(status: int) -> str:
    """LiveKit labels Twirp requests by status family: "4xx", "5xx", else the code itself
    (``service/twirp.go httpStatusFamily``)."""
    if 400 <= status <= 499:
        return "4xx"
    if 500 <= status <= 599:
        return "5xx"
    return str(status)


#: Our webhook statuses -> LiveKit's (``protocol/webhook/stats.go``).
_WEBHOOK_STATUS = {"success": "success", "failure": "failure", "dropped": "drop"}


class NodeCollector:
    """The ``livekit_*`` metrics of this node, built from current state on every scrape."""

    def __init__(self, node_id: str, sources: MetricsSources, lifecycle: Lifecycle) -> None:
        self._const = [node_id, NODE_TYPE]
        self._sources = sources
        self._lifecycle = lifecycle

    def collect(self) -> Iterator[Metric]:
        yield from self._rooms()
        yield from self._media(self._sources.media.snapshot())
        yield from self._quality(self._sources.media.quality)
        yield from self._congestion(self._sources.media.snapshot())
        yield from self._events()
        yield from self._api()
        yield self._gauge(
            "livekit_asyncio_tasks",
            "asyncio tasks of this process (a count that only grows is a leak).",
            [((), _task_count())],
        )

    def _labels(self, *names: str) -> list[str]:
        return ["node_id", "node_type", *names]

    def _gauge(
        self, name: str, doc: str, samples: Iterable[Sample], *labels: str
    ) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=self._labels(*labels))
        for values, value in samples:
            family.add_metric([*self._const, *values], value)
        return family

    def _counter(self, name: str, doc: str, samples: Iterable[Sample], *labels: str) -> Metric:
        """A counter; untyped when LiveKit's name has no ``_total`` (see the module doc)."""
        family: CounterMetricFamily | UnknownMetricFamily
        if name.endswith("_total"):
            family = CounterMetricFamily(name, doc, labels=self._labels(*labels))
        else:
            family = UnknownMetricFamily(name, doc, labels=self._labels(*labels))
        for values, value in samples:
            family.add_metric([*self._const, *values], value)
        return family

    def _rooms(self) -> Iterator[Metric]:
        rooms = list(self._sources.rooms.rooms.values())
        participants = [p for room in rooms for p in room.participants.values()]
        published = collections.Counter(
            models.TrackType.Name(track.info.type)
            for p in participants
            for track in p.tracks.published.values()
        )
        subscribed = collections.Counter(
            downtrack.outgoing.kind.upper()
            for p in participants
            for downtrack in p.tracks.downtracks.values()
        )
        yield self._gauge("livekit_room_total", "Rooms on this node.", [((), len(rooms))])
        yield self._gauge(
            "livekit_participant_total", "Participants on this node.", [((), len(participants))]
        )
        yield self._gauge(
            "livekit_track_published_total",
            "Tracks published on this node.",
            [((kind,), published[kind]) for kind in TRACK_KINDS],
            "kind",
        )
        yield self._gauge(
            "livekit_track_subscribed_total",
            "Track subscriptions on this node.",
            [((kind,), subscribed[kind]) for kind in TRACK_KINDS],
            "kind",
        )

    def _media(self, totals: MediaTotals) -> Iterator[Metric]:
        labels = ("direction", "transmission", "country")
        packets = [
            (("incoming", "initial", ""), totals.packets_in),
            (("outgoing", "initial", ""), totals.packets_out - totals.retransmit_packets_out),
            (("outgoing", "retransmit", ""), totals.retransmit_packets_out),
        ]
        octets = [
            (("incoming", "initial", ""), totals.bytes_in),
            (("outgoing", "initial", ""), totals.bytes_out - totals.retransmit_bytes_out),
            (("outgoing", "retransmit", ""), totals.retransmit_bytes_out),
        ]
        yield self._counter("livekit_packet_total", "RTP packets.", packets, *labels)
        yield self._counter("livekit_packet_bytes", "RTP payload bytes.", octets, *labels)
        rtcp = ("direction", "country")
        nacks = [(("incoming", ""), totals.nacks_in), (("outgoing", ""), totals.nacks_out)]
        plis = [(("incoming", ""), totals.plis_in), (("outgoing", ""), totals.plis_out)]
        yield self._counter("livekit_nack_total", "NACKed sequence numbers.", nacks, *rtcp)
        yield self._counter("livekit_pli_total", "Keyframe requests (PLI).", plis, *rtcp)
        firs = [(("incoming", ""), totals.firs_in)]
        yield self._counter("livekit_fir_total", "FIRs sent to publishers.", firs, *rtcp)
        dropped = sorted(((reason,), count) for reason, count in DROPPED.items())
        yield self._counter(
            "livekit_connection_dropped_total",
            "Connections refused or cut off (per-source cap, no request in time, idle).",
            dropped,
            "reason",
        )
        malformed = sorted(((protocol,), count) for protocol, count in MALFORMED.counts.items())
        yield self._counter(
            "livekit_malformed_packet_total",
            "Packets from the network dropped because they do not parse.",
            malformed,
            "protocol",
        )
        yield self._counter(
            "livekit_srtp_protect_failure_total",
            "RTP packets dropped because SRTP protection refused them.",
            [((), protect_failures())],
        )

    def _quality(self, stats: QualityStats) -> Iterator[Metric]:
        """Loss, jitter and round trips of the streams scored for connection quality, and the
        participants' scores, under LiveKit's names (``source`` and ``country`` are not
        known here and stay empty)."""
        labels = ("direction", "source", "type", "country")
        streams = sorted(stats.streams.items())
        yield self._counter(
            "livekit_packet_loss_total",
            "RTP packets lost, as counted in connection quality windows.",
            [((direction, "", kind, ""), s.lost) for (direction, kind), s in streams],
            *labels,
        )
        for name, doc, attribute in (
            ("livekit_packet_loss_percent", "Packet loss per window, %.", "loss_percent"),
            ("livekit_jitter_us", "Interarrival jitter per window, µs.", "jitter_us"),
            ("livekit_rtt_ms", "Round-trip time per window, ms.", "rtt_ms"),
        ):
            family = HistogramMetricFamily(name, doc, labels=self._labels(*labels))
            for (direction, kind), stream in streams:
                histogram: Histogram = getattr(stream, attribute)
                values = [*self._const, direction, "", kind, ""]
                family.add_metric(values, histogram.buckets(), histogram.total)
            yield family
        for name, doc, histogram in (
            ("livekit_quality_score", "Participants' mean opinion scores.", stats.scores),
            (
                "livekit_quality_rating",
                "Participants' quality (0 poor to 2 excellent).",
                stats.ratings,
            ),
        ):
            family = HistogramMetricFamily(name, doc, labels=self._labels())
            family.add_metric(self._const, histogram.buckets(), histogram.total)
            yield family

    def _congestion(self, totals: MediaTotals) -> Iterator[Metric]:
        """Per-subscriber congestion control: the capacity each subscriber's video is fitted
        to now, the tracks paused for bandwidth, and the padding sent to probe."""
        participants = [
            p for room in self._sources.rooms.rooms.values() for p in room.participants.values()
        ]
        estimates = Histogram(ESTIMATE_BUCKETS)
        paused = 0
        for participant in participants:
            bandwidth = participant.tracks.bandwidth
            if bandwidth is not None:
                estimates.observe(bandwidth.committed)
            paused += sum(1 for d in participant.tracks.downtracks.values() if d.paused)
        family = HistogramMetricFamily(
            "livekit_congestion_estimate_bps",
            "Subscribers' estimated bandwidth their video is fitted to, now.",
            labels=self._labels(),
        )
        family.add_metric(self._const, estimates.buckets(), estimates.total)
        yield family
        yield self._gauge(
            "livekit_congestion_paused_tracks",
            "Subscriptions paused now because the subscriber's bandwidth has no room for them.",
            [((), paused)],
        )
        yield self._counter(
            "livekit_congestion_pauses_total",
            "Subscriptions paused for bandwidth since start.",
            [((), totals.congestion_pauses)],
        )
        yield self._counter(
            "livekit_padding_bytes_total",
            "Padding bytes sent to probe subscribers' bandwidth.",
            [((), totals.padding_bytes_out)],
        )

    def _events(self) -> Iterator[Metric]:
        lifecycle = self._lifecycle
        yield self._counter(
            "livekit_participant_join_total",
            "Join stages reached.",
            sorted(lifecycle.joins.items()),
            "state",
            "warp",
        )
        yield self._counter(
            "livekit_track_publish_counter",
            "Track publications.",
            sorted(lifecycle.publishes.items()),
            "kind",
            "state",
        )
        rooms = HistogramMetricFamily(
            "livekit_room_duration_seconds", "How long rooms lasted.", labels=self._labels()
        )
        duration = lifecycle.room_duration
        rooms.add_metric(self._const, duration.buckets(), duration.total)
        yield rooms
        sessions = HistogramMetricFamily(
            "livekit_session_duration_ms",
            "How long participants stayed.",
            labels=self._labels("protocol_version"),
        )
        for version, histogram in sorted(lifecycle.session_duration.items()):
            sessions.add_metric([*self._const, version], histogram.buckets(), histogram.total)
        yield sessions

    def _api(self) -> Iterator[Metric]:
        twirp: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        for (service, method, status, code), count in self._sources.twirp_stats().items():
            # LiveKit labels the service without its package, "RoomService" (Twirp's
            # ServiceName); our handler keys it as in the URL, "livekit.RoomService".
            service_name = service.rpartition(".")[2]
            twirp[service_name, method, twirp_status_family(status), code] += count
        yield self._counter(
            "livekit_node_twirp_request_status",
            "Twirp API requests.",
            sorted(twirp.items()),
            "service",
            "method",
            "status",
            "code",
        )
        webhooks = [
            ((_WEBHOOK_STATUS.get(status, status), "", event), count)
            for (event, status), count in sorted(self._sources.webhook_counts().items())
        ]
        yield self._counter(
            "livekit_webhook_dispatch_total",
            "Webhook deliveries.",
            webhooks,
            "status",
            "reason",
            "event",
        )


def create_registry(
    node_id: str, sources: MetricsSources, lifecycle: Lifecycle
) -> CollectorRegistry:
    """Our own registry (never the process-global one): the node's collector plus the process
    metrics Prometheus users expect (CPU, memory, file descriptors, GC, Python version)."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(node_id, sources, lifecycle))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def _task_count() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # scraped outside the event loop (unit tests)
        return 0
