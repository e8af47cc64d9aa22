"""The server-offering (two-PC) subscriber transport without a network: offers, answers and
the recycling of stopped m= lines."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import cast

from protocol.sdp_media import Codec, OutgoingTrack
from sfu.rtc_adapter import DataChannel, PeerConnection
from sfu.tasks import TaskSet
from sfu.transport import SubscriberTransport

OPUS = Codec(111, "audio/opus", 48000, 2)
VP8 = Codec(96, "video/VP8", 90000)


class _FakePc:
    def __init__(self) -> None:
        self.offers: list[list[OutgoingTrack]] = []

    def create_data_channel(self, label: str, *, reliable: bool) -> DataChannel:
        return cast(DataChannel, object())

    async def create_offer(self, tracks: Sequence[OutgoingTrack]) -> str:
        self.offers.append(list(tracks))
        return "v=0\r\n"

    async def set_answer(self, text: str) -> None:
        return None

    async def close(self) -> None:
        return None


def _track(transport: SubscriberTransport, kind: str, sid: str) -> OutgoingTrack:
    codec = OPUS if kind == "audio" else VP8
    return OutgoingTrack(kind, transport.next_mid(), (codec,), (), f"PA|{sid}", sid, 1)


def test_a_stopped_line_carries_a_new_track_once_its_stop_was_answered() -> None:
    async def scenario() -> None:
        log = logging.LoggerAdapter(logging.getLogger("test"), {})
        tasks = TaskSet(log)
        pc = _FakePc()
        offers: list[int] = []
        transport = SubscriberTransport(
            cast(PeerConnection, pc), lambda _sdp, offer_id: offers.append(offer_id), tasks, log
        )

        async def negotiate() -> list[OutgoingTrack]:
            transport.negotiate()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            await transport.handle_answer("v=0\r\n")
            return pc.offers[-1]

        first = _track(transport, "audio", "TR_1")
        transport.add_track(first)
        await negotiate()
        transport.stop_track(first)
        # Not answered yet: a new track takes a new line.
        second = _track(transport, "audio", "TR_2")
        transport.add_track(second)
        offered = await negotiate()
        assert [(t.track_id, t.stopped) for t in offered] == [("TR_1", True), ("TR_2", False)]
        # The stop is answered: the next audio track recycles the line with a fresh mid; a
        # video track does not take an audio line.
        video = _track(transport, "video", "TR_v")
        transport.add_track(video)
        third = _track(transport, "audio", "TR_3")
        transport.add_track(third)
        offered = await negotiate()
        assert [t.track_id for t in offered] == ["TR_3", "TR_2", "TR_v"]
        assert len({t.mid for t in (first, second, video, third)}) == 4
        await transport.close()
        await tasks.close()

    asyncio.run(scenario())
