"""Which layer of a rid-based simulcast track is forwarded (sans-IO).

Until subscribers choose their own layer, every subscriber of a simulcast track gets one layer:
the highest that flows, as LiveKit gives a subscriber that asked for nothing less (its default
quality is HIGH). libwebrtc turns its highest layers off first when bandwidth or CPU runs short,
and turns them on again as its estimate grows, so the forwarded layer follows: a layer that
stops gives way at once to one that still flows, and a higher layer is taken once it has
flowed for :data:`UPGRADE_AFTER` checks in a row (a layer that flaps does not cost a keyframe
each time). Browsers (livekit-client) publish cameras this way by default, with rids ``q``,
``h`` and ``f``, and announce no SSRCs: each layer's SSRC is learnt from its first packet's rid
header extension (RFC 8852), and each RTX stream's from its repaired rid.
"""

from __future__ import annotations

from collections.abc import Sequence

#: LiveKit's rids, lowest layer first (``videolayerutils.go``); other rids keep their order in
#: the publisher's ``a=simulcast`` line, taken as lowest first too (livekit-client's order).
LIVEKIT_RID_ORDER = ("q", "h", "f")
#: Consecutive checks (about a second apart) a higher layer must flow before it is taken.
UPGRADE_AFTER = 2


class Layers:
    """The layers of one simulcast track and the one forwarded (``current``).

    Packet counts of the layers not forwarded live in one-element lists shared with the
    participant's drop table (``sfu/tracks.py``), so counting a dropped packet costs one
    increment; the forwarded layer is counted by its receiver's statistics.

    :param rids: the rids of the publisher's ``a=simulcast:send``, in its order.
    """

    __slots__ = (
        "_current_received",
        "_streaks",
        "counters",
        "current",
        "rank",
        "rid_by_ssrc",
        "rtx_by_rid",
    )

    def __init__(self, rids: Sequence[str]) -> None:
        known = {rid: index for index, rid in enumerate(LIVEKIT_RID_ORDER)}
        order = sorted(range(len(rids)), key=lambda i: (known.get(rids[i], len(known)), i))
        self.rank = {rids[i]: rank for rank, i in enumerate(order)}
        """rid -> 0 for the lowest layer, 1 for the next..."""
        self.rid_by_ssrc: dict[int, str] = {}
        self.rtx_by_rid: dict[str, int] = {}
        self.counters: dict[int, list[int]] = {}
        """SSRC of each layer not forwarded -> [packets since the last check]."""
        self.current = 0
        """SSRC of the forwarded layer; 0 until one is chosen."""
        self._current_received = 0
        self._streaks: dict[int, int] = {}

    def add_media(self, ssrc: int, rid: str) -> bool:
        """A layer's first packet. True when it should be forwarded from now on: nothing is
        forwarded yet, so video starts with whichever layer comes first."""
        self.rid_by_ssrc[ssrc] = rid
        if not self.current:
            self.current = ssrc
            return True
        self.counters.setdefault(ssrc, [1])
        return False

    def add_rtx(self, ssrc: int, repaired_rid: str) -> None:
        self.rtx_by_rid[repaired_rid] = ssrc

    def rtx_of(self, ssrc: int) -> int:
        """The RTX SSRC repairing the layer sent on ``ssrc``, or 0."""
        return self.rtx_by_rid.get(self.rid_by_ssrc.get(ssrc, ""), 0)

    def choose(self, current_received: int) -> int | None:
        """Called about once a second with the forwarded layer's total packet count: the SSRC
        to forward from now on, or None to keep the current one."""
        current_flowing = bool(self.current) and current_received > self._current_received
        self._current_received = current_received
        for ssrc, count in self.counters.items():
            self._streaks[ssrc] = self._streaks.get(ssrc, 0) + 1 if count[0] > 0 else 0
            count[0] = 0
        flowing = [ssrc for ssrc, streak in self._streaks.items() if streak > 0]
        if current_flowing:
            floor = self._rank_of(self.current)
            flowing = [
                ssrc
                for ssrc in flowing
                if self._rank_of(ssrc) > floor and self._streaks[ssrc] >= UPGRADE_AFTER
            ]
        if not flowing:
            return None
        best = max(flowing, key=self._rank_of)
        self.counters.pop(best, None)
        self._streaks.pop(best, None)
        if self.current:
            self.counters[self.current] = [0]
            self._streaks[self.current] = 0
        self.current = best
        return best

    def _rank_of(self, ssrc: int) -> int:
        return self.rank.get(self.rid_by_ssrc.get(ssrc, ""), -1)
