"""Node-wide media counters for the metrics endpoint, read when it is scraped.

The forwarding path counts in plain integers it keeps anyway: each :class:`TrackReceiver`'s
``ReceiveStats`` (packets and payload bytes in) and each :class:`DownTrack`'s ``packets`` and
``octets`` (out, which its Sender Reports need). Nothing is done per packet for metrics.
Receivers and downtracks are registered here when they are created; when one goes away its
counts are folded into node totals, so a node total never goes backwards (a Prometheus counter
that decreases reads as a restart). LiveKit keeps the same node totals as package-level atomics
(``pkg/telemetry/prometheus/packets.go``).

RTCP feedback (NACKs and keyframe requests from subscribers, the retransmissions they cause)
happens per feedback packet, not per media packet, so it is counted into the totals directly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sfu.downtrack import DownTrack
from sfu.histogram import QualityStats
from sfu.receiver import TrackReceiver


@dataclass(slots=True)
class MediaTotals:
    """Counts since the node started. "in" is what publishers send us, "out" what we send
    subscribers (LiveKit's ``incoming`` / ``outgoing`` directions); bytes are RTP payload."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    """Every packet sent to a subscriber, retransmissions included."""
    bytes_out: int = 0
    retransmit_packets_out: int = 0
    """Packets re-sent from the cache for a subscriber's NACK."""
    retransmit_bytes_out: int = 0
    nacks_in: int = 0
    """Sequence numbers we NACKed to publishers."""
    plis_in: int = 0
    """PLIs we sent to publishers."""
    firs_in: int = 0
    """FIRs we sent to publishers that only negotiated ``ccm fir``."""
    nacks_out: int = 0
    """Sequence numbers subscribers NACKed."""
    plis_out: int = 0
    """Keyframe requests from subscribers (PLI, or FIR from the few that send it)."""
    padding_packets_out: int = 0
    """Padding-only packets sent to probe subscribers' bandwidth."""
    padding_bytes_out: int = 0
    congestion_pauses: int = 0
    """Video tracks paused for a subscriber's bandwidth (``sfu/congestion.py``)."""

    def add_receiver(self, receiver: TrackReceiver) -> None:
        self.packets_in += receiver.stats.received
        self.bytes_in += receiver.stats.total_bytes
        self.nacks_in += receiver.nacks
        self.plis_in += receiver.plis
        self.firs_in += receiver.firs

    def add_downtrack(self, downtrack: DownTrack) -> None:
        self.packets_out += downtrack.packets
        self.bytes_out += downtrack.octets
        self.padding_packets_out += downtrack.padding_packets
        self.padding_bytes_out += downtrack.padding_octets


class MediaCounters:
    """Live receivers and downtracks, plus the totals of those that have gone."""

    def __init__(self) -> None:
        self.receivers: set[TrackReceiver] = set()
        self.downtracks: set[DownTrack] = set()
        self.totals = MediaTotals()
        """Counts of retired objects and RTCP feedback; see :meth:`snapshot` for the sum."""
        self.quality = QualityStats()
        """Loss, jitter, round trips and scores seen in connection quality windows."""

    def add_receiver(self, receiver: TrackReceiver) -> None:
        self.receivers.add(receiver)

    def add_downtrack(self, downtrack: DownTrack) -> None:
        self.downtracks.add(downtrack)

    def retire_receiver(self, receiver: TrackReceiver) -> None:
        """Fold ``receiver``'s counts into the totals, once; it gets no packets after this."""
        if receiver in self.receivers:
            self.receivers.remove(receiver)
            self.totals.add_receiver(receiver)

    def retire_downtrack(self, downtrack: DownTrack) -> None:
        if downtrack in self.downtracks:
            self.downtracks.remove(downtrack)
            self.totals.add_downtrack(downtrack)

    def snapshot(self) -> MediaTotals:
        """The node's totals now: retired objects' counts plus the live ones'."""
        result = dataclasses.replace(self.totals)
        for receiver in self.receivers:
            result.add_receiver(receiver)
        for downtrack in self.downtracks:
            result.add_downtrack(downtrack)
        return result


NODE_COUNTERS = MediaCounters()
"""The process's counters (one node per process, as LiveKit's package-level totals)."""
