"""The load tester's media path without an event loop: clips, RTP packetising, the pacer,
receive counters and the /proc CPU reader."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import media, procstat, stats
from loadtest.media import Clip, MediaError, read_clip, write_clip
from loadtest.pacer import MAX_LAG_S, MediaSource, Pacer
from loadtest.packetizer import (
    MAX_PACKET,
    OpusPacketizer,
    RtpWriter,
    Vp8Packetizer,
    extension_block,
    parse_vp8_descriptor,
    split_frame,
    split_frames,
)
from loadtest.stats import StreamCounter, TrackResult, percentile
from protocol import rtp


def _clip(frames: int = 3, size: int = 3000, keyframes: tuple[int, ...] = (0,)) -> Clip:
    data = tuple(bytes([i]) * size for i in range(frames))
    return Clip("VP8", 90_000, 3000, data, keyframes)


def test_clip_file_round_trip(tmp_path: Path) -> None:
    clip = _clip(keyframes=(0, 2))
    write_clip(tmp_path / "c.clip", clip)
    assert read_clip(tmp_path / "c.clip") == clip
    (tmp_path / "c.clip").write_bytes((tmp_path / "c.clip").read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_clip(tmp_path / "c.clip")
    (tmp_path / "x.clip").write_bytes(b"not a clip")
    with pytest.raises(ValueError, match="not a clip"):
        read_clip(tmp_path / "x.clip")
    whole = _whole_clip_file(tmp_path, clip)
    header_end = whole.index(b"\n") + 1
    (tmp_path / "cut.clip").write_bytes(whole[: header_end + 2])  # inside a length prefix
    with pytest.raises(ValueError, match="truncated or damaged"):
        read_clip(tmp_path / "cut.clip")
    (tmp_path / "keyless.clip").write_bytes(whole.replace(b'"count"', b'"cuont"', 1))
    with pytest.raises(ValueError, match="truncated or damaged"):
        read_clip(tmp_path / "keyless.clip")


def _whole_clip_file(tmp_path: Path, clip: Clip) -> bytes:
    write_clip(tmp_path / "whole.clip", clip)
    return (tmp_path / "whole.clip").read_bytes()


def test_an_unwritable_clip_cache_is_a_media_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(MediaError, match="cannot write the clip cache"):
        media._cached(blocker / "sub" / "c.clip", lambda: _clip(keyframes=(0,)))


@pytest.mark.parametrize(("size", "room", "count"), [(1, 100, 1), (100, 100, 1), (101, 100, 2)])
def test_split_frame_even_chunks(size: int, room: int, count: int) -> None:
    frame = bytes(range(256)) * (size // 256) + bytes(size % 256)
    chunks = split_frame(frame, room)
    assert len(chunks) == count
    assert b"".join(chunks) == frame
    assert max(len(c) for c in chunks) - min(len(c) for c in chunks) <= 1


def test_vp8_packets_rfc7741() -> None:
    writer = RtpWriter(0x1234, 96, extension_block("1", "f"), 65534)
    packetizer = Vp8Packetizer(writer, picture_id=0x7FFF)
    chunks = split_frame(bytes(5000), packetizer.room)
    first = packetizer.frame(chunks, 1000)
    second = packetizer.frame(chunks, 4000)
    assert all(len(p) <= MAX_PACKET for p in first + second)
    assert [rtp.sequence_number(p) for p in first[:3]] == [65534, 65535, 0]
    assert {rtp.timestamp(p) for p in first} == {1000}
    assert [bool(p[1] & 0x80) for p in first] == [False] * (len(first) - 1) + [True]
    for packets, picture_id in ((first, 0x7FFF), (second, 0)):
        descriptors = []
        for packet in packets:
            extension, header, end = rtp.header_end(packet)
            assert dict(rtp.extensions(packet, extension, header)) == {1: b"1", 2: b"f"}
            descriptors.append(parse_vp8_descriptor(packet[header:end]))
        assert [start for start, _, _ in descriptors] == [True] + [False] * (len(packets) - 1)
        assert {pid for _, pid, _ in descriptors} == {picture_id}
    assert writer.packets == len(first) + len(second)


def test_opus_marker_on_the_first_packet_only() -> None:
    packetizer = OpusPacketizer(RtpWriter(7, 111, extension_block("0"), 0))
    packets = [packetizer.frame([b"opus"], 960 * i)[0] for i in range(3)]
    assert [p[1] for p in packets] == [0x80 | 111, 111, 111]
    assert [rtp.payload_type(p) for p in packets] == [111] * 3


def _source(clip: Clip, start: float = 10.0, ts0: int = 100) -> tuple[MediaSource, RtpWriter]:
    writer = RtpWriter(1, 96, b"", 0)
    packetizer = Vp8Packetizer(writer)
    chunks = split_frames(clip.frames, packetizer.room)
    return MediaSource(clip, chunks, packetizer, start=start, ts0=ts0, sink=print), writer


def test_pacer_loops_with_continuous_timestamps() -> None:
    clip = _clip(frames=3, size=2000)
    source, _ = _source(clip)
    pacer = Pacer()
    pacer.add(source)
    assert pacer.poll(9.99) == []
    timestamps, sequences = [], []
    for frame in range(7):
        due = pacer.next_due()
        assert due is not None
        assert due == pytest.approx(10.0 + frame * clip.period)
        [(polled, packets)] = pacer.poll(due)
        assert polled is source
        assert len(packets) == 2  # 2000 bytes: two packets per frame
        timestamps.append(rtp.timestamp(packets[0]))
        sequences += [rtp.sequence_number(p) for p in packets]
    assert timestamps == [100 + 3000 * i for i in range(7)]
    assert sequences == list(range(14))


def test_pacer_orders_layers_and_skips_when_late() -> None:
    clip = _clip()
    high, _ = _source(clip, start=1.0)
    low, _ = _source(clip, start=1.0)
    pacer = Pacer()
    pacer.add(high)
    pacer.add(low)
    assert [s for s, _ in pacer.poll(1.0)] == [high, low]
    late = 1.0 + clip.period + MAX_LAG_S + 0.2
    [(first, packets), _] = pacer.poll(late)
    skipped = first.skipped
    assert skipped > 0
    assert rtp.timestamp(packets[0]) == 100 + 3000 * (1 + skipped)
    assert len(pacer) == 2
    high.active = False
    assert len(pacer) == 1


def test_keyframe_request_and_pause() -> None:
    clip = _clip(frames=4, size=10, keyframes=(0, 2))
    source, writer = _source(clip)
    payloads = []
    for _ in range(4):
        payloads.append(source.emit()[0][-1])
        if len(payloads) == 2:
            source.request_keyframe()  # at frame 2 already: stays there
        if len(payloads) == 3:
            source.request_keyframe()  # from frame 3 back to the keyframe at 2
    assert payloads == [0, 1, 2, 2]
    source.paused = True
    sent = writer.packets
    assert source.emit() == []
    assert writer.packets == sent
    source.paused = False
    assert rtp.timestamp(source.emit()[0]) == 100 + 3000 * 5


def test_stream_counter_loss_and_wrap() -> None:
    counter = StreamCounter(65533, "video", "TR_x")
    gaps = [counter.on_packet(sequence, 100) for sequence in (65533, 65534, 0, 3, 2)]
    assert gaps == [0, 0, 1, 2, 0]
    assert (counter.packets, counter.expected, counter.lost) == (5, 7, 2)
    assert counter.highest == 65536 + 3
    fraction, cumulative = counter.report_interval()
    assert (fraction, cumulative) == ((2 << 8) // 7, 2)
    counter.on_packet(4, 100)
    assert counter.report_interval() == (0, 2)


def test_percentile_and_result_json() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    result = stats.TesterResult("a", publishes=False, subscribes=True, joined=True, connect_ms=5.0)
    result.tracks["TR_1"] = TrackResult("audio", packets=3, octets=300)
    assert stats.TesterResult.from_json(result.to_json()) == result


def test_cpu_seconds_of_a_process_tree() -> None:
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    child = subprocess.Popen([sys.executable, "-c", busy + "time.sleep(30)"])
    try:
        assert child.pid in procstat.process_tree(os.getpid())
        for _ in range(100):
            if procstat.cpu_seconds(child.pid) >= 0.2:
                break
            subprocess.run([sys.executable, "-c", "import time; time.sleep(0.05)"], check=True)
        assert procstat.cpu_seconds(os.getpid()) >= procstat.cpu_seconds(child.pid) >= 0.2
    finally:
        child.kill()
        child.wait()
    with pytest.raises(ProcessLookupError):
        procstat.cpu_seconds(child.pid)
