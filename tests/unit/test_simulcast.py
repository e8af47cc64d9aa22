"""Rid-based simulcast without a network: which layer is forwarded, RTX padding never taken
for media, and a stopped layer replaced by one that flows (sfu/simulcast.py, sfu/tracks.py)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, cast

from livekit.protocol import models, rtc

from protocol import rtp, sdp, sdp_media
from sfu.simulcast import Layers
from sfu.tracks import ParticipantTracks
from tests.unit.test_sdp import PARAMS

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
MID, RID, REPAIRED_RID = 4, 10, 11  # the extension ids of the captured Chromium offer
VP8_PT, RTX_PT = 96, 97
Q, H, F, RTX_Q = 1001, 1002, 1003, 2001


def test_layers_rank_livekit_rids_whatever_their_order() -> None:
    layers = Layers(["f", "h", "q"])
    assert layers.rank == {"q": 0, "h": 1, "f": 2}
    other = Layers(["2", "1", "0"])  # rids LiveKit does not name keep the publisher's order
    assert other.rank == {"2": 0, "1": 1, "0": 2}


def test_first_layer_starts_then_the_highest_flowing_one_is_taken() -> None:
    layers = Layers(["q", "h", "f"])
    assert layers.add_media(Q, "q"), "video starts with whichever layer comes first"
    assert not layers.add_media(H, "h")
    assert not layers.add_media(F, "f")
    layers.counters[F][0] += 1
    assert layers.choose(current_received=10) is None, "f must flow twice in a row first"
    layers.counters[F][0] += 1
    layers.counters[H][0] += 1
    assert layers.choose(current_received=20) == F
    assert layers.current == F


def test_a_stopped_layer_gives_way_at_once_and_comes_back_later() -> None:
    layers = Layers(["q", "h", "f"])
    assert layers.add_media(F, "f")
    assert not layers.add_media(Q, "q")
    assert layers.choose(current_received=10) is None, "f flows: keep it"
    layers.counters[Q][0] += 5  # f stops (bandwidth), q goes on
    assert layers.choose(current_received=10) == Q
    for received in (20, 30):
        layers.counters[F][0] += 1  # f is back
        chosen = layers.choose(current_received=received)
    assert chosen == F
    assert layers.choose(current_received=30) is None, "nothing flows: nothing to switch to"


def test_flapping_layer_is_not_taken() -> None:
    layers = Layers(["q", "h"])
    assert layers.add_media(Q, "q")
    assert not layers.add_media(H, "h")
    for received in range(10, 100, 10):
        if received % 20:
            layers.counters[H][0] += 1
        assert layers.choose(current_received=received) is None


class _Publisher:
    def __init__(self) -> None:
        self.rtcp: list[bytes] = []
        self.on_rtp: Any = None
        self.on_rtcp: Any = None

    def send_rtcp(self, packet: bytes) -> None:
        self.rtcp.append(packet)


class _Subscriber:
    def __init__(self) -> None:
        self.pc = _Publisher()
        self.on_answer: Any = None


def _packet(ssrc: int, sequence: int, pt: int, elements: list[tuple[int, bytes]]) -> bytes:
    block = rtp.build_extension_block(elements)
    header = struct.pack("!BBHII", 0x90, pt, sequence, sequence * 3000, ssrc)
    return header + block + b"vp8-payload"


def _published_chromium_camera() -> tuple[ParticipantTracks, _Publisher, Any]:
    publisher = _Publisher()
    tracks = ParticipantTracks(cast(Any, publisher), cast(Any, _Subscriber()))
    offer_text = (VECTORS / "chromium_simulcast_offer.sdp").read_text()
    offer = sdp.parse(offer_text)
    answer = sdp_media.answer(
        offer, PARAMS, ["audio/opus", "video/VP8", "video/rtx"], session_id=1, address="x"
    )
    video = offer.media[1]
    cid = (video.value("msid") or "").split(" ")[1]
    request = rtc.AddTrackRequest(cid=cid, type=models.TrackType.VIDEO)
    tracks.add(request, can_publish_source=True)
    ready, _ = tracks.negotiated(sdp.parse(offer_text), answer)
    assert [t.info.mid for t in ready] == ["1"]
    return tracks, publisher, ready[0]


def test_rtx_padding_first_is_not_taken_for_the_camera() -> None:
    tracks, publisher, track = _published_chromium_camera()
    receiver = track.receiver
    mid = (MID, b"1")
    # libwebrtc's bandwidth probes: RTX padding, before any media.
    tracks._on_rtp(_packet(RTX_Q, 1, RTX_PT, [mid, (REPAIRED_RID, b"q")]))
    assert receiver.media_ssrc == 0
    tracks._on_rtp(_packet(Q, 20, VP8_PT, [mid, (RID, b"q")]))
    assert receiver.media_ssrc == Q
    assert receiver.rtx == (RTX_PT, RTX_Q), "q's RTX is known by its repaired rid"
    assert publisher.rtcp, "a keyframe is asked for on the chosen layer"
    tracks._on_rtp(_packet(H, 10, VP8_PT, [mid, (RID, b"h")]))
    assert receiver.media_ssrc == Q, "h is only counted until the next check"
    # Later packets of q carry no rid (libwebrtc stops sending it) and are still forwarded.
    tracks._on_rtp(_packet(Q, 21, VP8_PT, []))
    assert receiver.stats.received == 2


def test_layers_switch_up_and_down_as_they_start_and_stop() -> None:
    tracks, _, track = _published_chromium_camera()
    receiver = track.receiver
    mid = (MID, b"1")
    tracks._on_rtp(_packet(Q, 1, VP8_PT, [mid, (RID, b"q")]))
    tracks._on_rtp(_packet(H, 100, VP8_PT, [mid, (RID, b"h")]))
    tracks.tick(1.0)
    assert receiver.media_ssrc == Q, "h has flowed once"
    tracks._on_rtp(_packet(Q, 2, VP8_PT, []))
    tracks._on_rtp(_packet(H, 101, VP8_PT, []))
    tracks.tick(2.0)
    assert receiver.media_ssrc == H, "h has flowed twice in a row: taken"
    assert track.ssrcs == (H,)
    before = receiver.stats.received
    tracks._on_rtp(_packet(H, 102, VP8_PT, []))
    tracks._on_rtp(_packet(Q, 3, VP8_PT, []))  # q is dropped and counted, not forwarded
    assert receiver.stats.received == before + 1
    assert tracks._unforwarded[Q] == [1]
    tracks.tick(3.0)
    tracks._on_rtp(_packet(Q, 4, VP8_PT, []))  # h stops, q goes on
    tracks.tick(4.0)
    assert receiver.media_ssrc == Q
