"""The C fan-out (sfu/_fastsend.c) against its Python reference (sfu/fanout.py), packet for
packet, and its fast path (libsrtp protect, sendmmsg) against a real SRTP receiver."""

from __future__ import annotations

import logging
import os
import random
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest
from pylibsrtp import Policy, Session

from protocol import rtp
from sfu import fanout, twcc
from sfu.srtp import SrtpProtector

_fastsend = pytest.importorskip("sfu._fastsend")

EXTENSION = rtp.build_extension_block([(1, b"3")])
RED, OPUS = 63, 111


class Capture:
    """A slow-path send that keeps copies of what it was given."""

    def __init__(self, accept: bool = True) -> None:
        self.packets: list[bytes] = []
        self.accept = accept

    def __call__(self, packet: memoryview) -> bool:
        self.packets.append(bytes(packet))
        return self.accept


def _core(cls: Any, sink: Any, **overrides: Any) -> Any:
    arguments: dict[str, Any] = {
        "ssrc_out": 0xDEADBEEF,
        "clock_rate": 48000,
        "first_sequence": 65530,  # wraps within the test
        "first_timestamp": 0xFFFFF000,
        "extension": EXTENSION,
        "payload_types": {OPUS: 100, RED: 101},
        "red_payload_type": RED,
    }
    arguments.update(overrides)
    return cls(sink, *arguments.values())


def _packet(sequence: int, timestamp: int, ssrc: int, payload: bytes, pt: int = OPUS) -> bytes:
    marker = 0x80 if sequence % 7 == 0 else 0
    header = struct.pack("!BBHII", 0x80, marker | pt, sequence & 0xFFFF, timestamp, ssrc)
    return header + payload


def _red_payload(primary: bytes) -> bytes:
    redundant = b"old!"
    # One redundant block header (F=1, PT, 14-bit offset, 10-bit length), then F=0 primary.
    block = struct.pack("!BHB", 0x80 | OPUS, (960 << 2) | 0, len(redundant))
    return block + bytes([OPUS]) + redundant + primary


def _stream() -> list[tuple[bytes, float]]:
    """Packets with what a munger must handle: wrap, reorder, loss, a very old packet, an SSRC
    change, RED, a packet too long to protect."""
    rng = random.Random(7)
    packets: list[tuple[bytes, float]] = []
    sequence, timestamp, now = 65500, 0xFFFFFF00, 1.0
    for index in range(120):
        sequence = (sequence + 1) & 0xFFFF
        timestamp = (timestamp + 960) & 0xFFFFFFFF
        now += 0.02
        payload = os.urandom(rng.randrange(1, 300))
        if index % 11 == 0:
            packets.append((_packet(sequence, timestamp, 1111, _red_payload(payload), RED), now))
        else:
            packets.append((_packet(sequence, timestamp, 1111, payload), now))
    packets.insert(50, packets.pop(45))  # reordered
    del packets[60:63]  # lost
    packets.append((_packet((sequence - 2000) & 0xFFFF, 5, 1111, b"stale"), now))
    packets.append((_packet(sequence, timestamp, 1111, os.urandom(1400)), now))  # too long
    for index in range(30):  # the publisher restarted: new SSRC, new numbering
        packets.append((_packet(900 + index, 77 + 960 * index, 2222, b"x" * 40), now + 1 + index))
    return packets


def _feed(core: Any, packets: list[tuple[bytes, float]], send_all: Callable[..., bool]) -> int:
    keyframes = 0
    for packet, now in packets:
        _, start, end = rtp.header_end(packet)
        fields = (rtp.sequence_number(packet), rtp.timestamp(packet), rtp.ssrc(packet))
        keyframes += send_all(packet, start, end, *fields, now, core)
    return keyframes


@pytest.mark.parametrize("red_accepted", [True, False])
def test_c_core_writes_what_the_reference_writes(red_accepted: bool) -> None:
    packets = _stream()
    results = []
    for cls, sink_cls, fan in (
        (fanout.PyDownTrackCore, fanout.PySink, fanout.py_fanout),
        (_fastsend.DownTrackCore, _fastsend.Sink, _fastsend.fanout),
    ):
        capture = Capture()
        core = _core(cls, sink_cls(capture))
        core.red_accepted = red_accepted
        core.needs_keyframe = True

        def send_all(*args: Any, fan: Any = fan) -> bool:
            *fields, target = args
            return bool(fan(*fields, {"s": target}))

        keyframes = _feed(core, packets, send_all)
        recent = [rtp.sequence_number(p) for p in capture.packets[-5:]]
        mapped = [core.sent(s) for s in (0, 1, 65535, 900, *recent)]
        timestamps = [core.translate_timestamp(t) for t in (0, 77, 0xFFFFFFFF)]
        results.append((capture.packets, core.packets, core.octets, keyframes, mapped, timestamps))
    assert results[0][0], "the reference sent nothing"
    assert results[1] == results[0]
    sent = results[0][0]
    assert len(sent) == len(packets) - 2, "the stale and the oversized packet are dropped"
    assert all(p[8:12] == b"\xde\xad\xbe\xef" and p[12:16] == EXTENSION[:4] for p in sent)
    assert results[0][3] == 1, "one keyframe request, on the first packet sent"


def test_disabled_and_refused_sends_are_not_counted() -> None:
    packet = _packet(10, 960, 5, b"abc")
    for cls, sink_cls in (
        (fanout.PyDownTrackCore, fanout.PySink),
        (_fastsend.DownTrackCore, _fastsend.Sink),
    ):
        refusing = Capture(accept=False)
        core = _core(cls, sink_cls(refusing))
        core.needs_keyframe = True
        assert core.forward(packet, 12, len(packet), 10, 960, 5, 0.0) is False
        assert (core.packets, core.needs_keyframe, len(refusing.packets)) == (0, True, 1)
        core.enabled = False
        assert core.forward(packet, 12, len(packet), 11, 1920, 5, 0.0) is False
        core.enabled, core.bound = True, False  # not yet in the subscriber's answer
        assert core.forward(packet, 12, len(packet), 12, 2880, 5, 0.0) is False
        assert len(refusing.packets) == 1


def test_fanout_rejects_what_is_not_a_downtrack() -> None:
    packet = _packet(1, 2, 3, b"p")
    with pytest.raises(TypeError):
        _fastsend.fanout(packet, 12, len(packet), 1, 2, 3, 0.0, {"x": object()})
    with pytest.raises(ValueError):
        _fastsend.fanout(packet, 12, len(packet) + 5, 1, 2, 3, 0.0, {})


def _srtp_pair() -> tuple[Session, Session]:
    key = os.urandom(30)
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    return tx, rx


def test_fast_path_protects_and_sends_more_than_one_batch() -> None:
    """300 subscribers (more than one sendmmsg batch of 256) on one socket: each receives the
    reference's packet, protected with its own session."""
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.bind(("127.0.0.1", 0))
    receivers: list[tuple[socket.socket, Session, Any]] = []
    downtracks: dict[str, Any] = {}
    spilled: list[bytes] = []
    for index in range(300):
        inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        inbox.bind(("127.0.0.1", 0))
        inbox.settimeout(2)
        tx, rx = _srtp_pair()
        protector = SrtpProtector(tx)
        sink = _fastsend.Sink(Capture())
        assert sink.set_fast(
            protector.context_address,
            protector.session,
            out.fileno(),
            inbox.getsockname(),
            lambda data, address: spilled.append(data),
        )
        downtracks[str(index)] = _core(_fastsend.DownTrackCore, sink, ssrc_out=1000 + index)
        receivers.append((inbox, rx, protector))
    reference = _core(fanout.PyDownTrackCore, fanout.PySink(expected := Capture()))
    for sequence in range(3):
        packet = _packet(sequence, 960 * sequence, 42, os.urandom(200))
        fields = (sequence, 960 * sequence, 42)
        _fastsend.fanout(packet, 12, len(packet), *fields, 1.0, downtracks)
        reference.forward(packet, 12, len(packet), *fields, 1.0)
    for index, (inbox, rx, _) in enumerate(receivers):
        for sequence in range(3):
            plain = rx.unprotect(inbox.recv(2048))
            want = bytearray(expected.packets[sequence])
            want[8:12] = (1000 + index).to_bytes(4, "big")
            # Each subscriber starts from the same first numbers here; only the SSRC differs.
            assert plain == bytes(want)
        inbox.close()
    assert not spilled
    assert all(d.packets == 3 for d in downtracks.values())
    out.close()


def test_datagrams_the_kernel_refuses_go_to_spill() -> None:
    """A descriptor sendmmsg cannot use (a pipe) leaves every datagram to the spill callback,
    still protected, with the sink's address."""
    read_end, write_end = os.pipe()
    tx, rx = _srtp_pair()
    protector = SrtpProtector(tx)
    spilled: list[tuple[bytes, tuple[str, int]]] = []
    sink = _fastsend.Sink(Capture())
    sink.set_fast(
        protector.context_address,
        protector.session,
        write_end,
        ("127.0.0.1", 9),
        lambda data, address: spilled.append((data, address)),
    )
    core = _core(_fastsend.DownTrackCore, sink)
    packet = _packet(5, 960, 7, b"hello")
    core.forward(packet, 12, len(packet), 5, 960, 7, 0.0)
    assert len(spilled) == 1 and spilled[0][1] == ("127.0.0.1", 9)
    assert rx.unprotect(spilled[0][0]).endswith(b"hello")
    assert core.packets == 1
    sink.clear_fast()
    assert not sink.fast
    os.close(read_end)
    os.close(write_end)


def test_fast_path_refused_without_keys_or_address() -> None:
    sink = _fastsend.Sink(Capture())
    assert not sink.set_fast(0, None, 3, ("127.0.0.1", 9), print)
    assert not sink.set_fast(1, None, 3, ("not an address", 9), print)
    assert not sink.fast


def test_a_send_that_removes_a_queued_downtrack_is_safe() -> None:
    """A Python send may close another subscriber whose packet is already queued: the batch
    keeps that subscriber's sink alive until the kernel has it."""
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbox.bind(("127.0.0.1", 0))
    inbox.settimeout(2)
    tx, rx = _srtp_pair()
    protector = SrtpProtector(tx)
    fast_sink = _fastsend.Sink(Capture())
    fast_sink.set_fast(
        protector.context_address, protector.session, out.fileno(), inbox.getsockname(), print
    )
    downtracks: dict[str, Any] = {"fast": _core(_fastsend.DownTrackCore, fast_sink)}
    del fast_sink  # only the downtrack holds it now

    def closing_send(packet: memoryview) -> bool:
        downtracks.pop("fast", None)
        return True

    downtracks["slow"] = _core(_fastsend.DownTrackCore, _fastsend.Sink(closing_send))
    packet = _packet(1, 960, 9, b"still delivered")
    _fastsend.fanout(packet, 12, len(packet), 1, 960, 9, 0.0, downtracks)
    assert list(downtracks) == ["slow"]
    assert rx.unprotect(inbox.recv(2048)).endswith(b"still delivered")
    inbox.close()
    out.close()


def test_start_up_says_which_fan_out_forwards(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        fanout.log_implementation(logging.getLogger("test"))
    expected = "C fan-out" if fanout.ACCELERATED else "pure-Python fan-out"
    assert expected in caplog.text


def test_uninitialised_cores_and_sinks_are_skipped_not_crashed() -> None:
    """A subclass that never called the base __init__, or a sink without its send, forwards
    nothing (the C side must not follow a NULL)."""
    packet = _packet(1, 2, 3, b"p")
    bare = _fastsend.DownTrackCore.__new__(_fastsend.DownTrackCore)
    assert _fastsend.fanout(packet, 12, len(packet), 1, 2, 3, 0.0, {"bare": bare}) is False
    empty_sink = _fastsend.Sink.__new__(_fastsend.Sink)
    core = _core(_fastsend.DownTrackCore, empty_sink)
    assert core.forward(packet, 12, len(packet), 1, 2, 3, 0.0) is False
    assert core.packets == 0


def _random_stream(rng: random.Random) -> list[tuple[bytes, float]]:
    """A publisher stream with random jumps, duplicates, reordering, SSRC changes, RED and
    payload sizes up to past the protect limit."""
    packets: list[tuple[bytes, float]] = []
    sequence, timestamp, ssrc, now = rng.randrange(65536), rng.randrange(1 << 32), 1, 0.0
    for _ in range(rng.randrange(50, 400)):
        roll = rng.random()
        if roll < 0.03:
            ssrc, sequence = rng.randrange(1, 1 << 32), rng.randrange(65536)
        elif roll < 0.08:
            sequence = (sequence + rng.randrange(2, 3000)) & 0xFFFF  # loss, or a big jump
        elif roll < 0.12:
            sequence = (sequence - rng.randrange(1, 1500)) & 0xFFFF  # late, maybe stale
        else:
            sequence = (sequence + 1) & 0xFFFF
        timestamp = (timestamp + rng.choice((0, 960, 3000, 90000))) & 0xFFFFFFFF
        now += rng.random() * 0.05
        payload = rng.randbytes(rng.choice((1, rng.randrange(1, 400), rng.randrange(1300, 1500))))
        red = rng.random() < 0.1
        body = _red_payload(payload) if red else payload
        packets.append((_packet(sequence, timestamp, ssrc, body, RED if red else OPUS), now))
        if rng.random() < 0.05:
            packets.append(packets[-1])  # a duplicate
    return packets


@pytest.mark.parametrize("seed", range(20))
def test_random_streams_leave_both_paths_byte_for_byte_alike(seed: int) -> None:
    """Seeded fuzz: whatever a publisher sends, and whichever packets a subscriber skips or
    gets with the marker set, the C fan-out writes what its Python reference writes, packet for
    packet, with the same counters and translations."""
    rng = random.Random(seed)
    packets = _random_stream(rng)
    red_accepted = rng.random() < 0.5
    overrides = {"first_sequence": rng.randrange(65536), "first_timestamp": rng.randrange(1 << 32)}
    probes = [rng.randrange(65536) for _ in range(5)]
    actions = [rng.choice(("forward",) * 7 + ("marker", "skip", "skip")) for _ in packets]
    vp8 = rng.random() < 0.5  # payloads are random bytes: whatever they hold, both agree
    results = []
    for cls, sink_cls, fan in (
        (fanout.PyDownTrackCore, fanout.PySink, fanout.py_fanout),
        (_fastsend.DownTrackCore, _fastsend.Sink, _fastsend.fanout),
    ):
        capture = Capture()
        core = _core(cls, sink_cls(capture), **overrides)
        core.red_accepted = red_accepted
        core.vp8 = vp8
        skip = fanout.py_skip if fan is fanout.py_fanout else _fastsend.skip
        for (packet, now), action in zip(packets, actions, strict=True):
            _, start, end = rtp.header_end(packet)
            fields = (rtp.sequence_number(packet), rtp.timestamp(packet), rtp.ssrc(packet))
            if action == "skip":  # a layer this subscriber does not get (an SVC track)
                skip(fields[0], fields[2], {"s": core})
            else:
                fan(packet, start, end, *fields, now, {"s": core}, action == "marker")
        recent = [rtp.sequence_number(p) for p in capture.packets[-5:]]
        mapped = [core.sent(s) for s in (*probes, *recent)]
        results.append((capture.packets, core.packets, core.octets, mapped))
    assert results[0][0], "the reference sent nothing"
    assert results[1] == results[0]


def test_a_spill_that_clears_its_own_sink_is_safe() -> None:
    """The callback is held while it runs: a spill that turns its sink's fast path off (and so
    drops the sink's references to itself) must not crash the fan-out."""
    read_end, write_end = os.pipe()
    tx, _rx = _srtp_pair()
    protector = SrtpProtector(tx)
    spilled: list[bytes] = []
    sink = _fastsend.Sink(Capture())

    def spill(data: bytes, address: tuple[str, int]) -> None:
        spilled.append(data)
        sink.clear_fast()

    sink.set_fast(protector.context_address, protector.session, write_end, ("127.0.0.1", 9), spill)
    del spill
    downtracks = {name: _core(_fastsend.DownTrackCore, sink) for name in ("a", "b")}
    packet = _packet(5, 960, 7, b"hello")
    _fastsend.fanout(packet, 12, len(packet), 5, 960, 7, 0.0, downtracks)
    assert len(spilled) == 1, "the second datagram is dropped once the fast path is gone"
    assert not sink.fast
    os.close(read_end)
    os.close(write_end)


def test_protect_failures_are_counted() -> None:
    """libsrtp refusing a packet drops it; the drop is counted for the metrics."""
    tx, _rx = _srtp_pair()
    protector = SrtpProtector(tx)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink = _fastsend.Sink(Capture())
    sink.set_fast(
        protector.context_address, protector.session, out.fileno(), ("127.0.0.1", 9), print
    )
    packet = _packet(5, 960, 7, b"hello")
    before = fanout.protect_failures()
    # Two downtracks writing the same SSRC and sequence: libsrtp refuses the second as a replay.
    for _ in range(2):
        _core(_fastsend.DownTrackCore, sink).forward(packet, 12, len(packet), 5, 960, 7, 0.0)
    out.close()
    assert fanout.protect_failures() == before + 1


@pytest.mark.parametrize(
    ("core_cls", "sink_cls", "fan", "skip"),
    [
        (fanout.PyDownTrackCore, fanout.PySink, fanout.py_fanout, fanout.py_skip),
        (_fastsend.DownTrackCore, _fastsend.Sink, _fastsend.fanout, _fastsend.skip),
    ],
)
def test_skipped_packets_leave_no_gap_and_the_marker_can_be_set(
    core_cls: Any, sink_cls: Any, fan: Any, skip: Any
) -> None:
    capture = Capture()
    core = _core(core_cls, sink_cls(capture), first_sequence=100)
    targets = {"s": core}
    for sequence in (1, 2, 3, 4, 5, 6):
        packet = _packet(sequence, sequence * 960, 42, b"payload")
        if sequence in (3, 4):
            skip(sequence, 42, targets)
        else:
            fan(packet, 12, len(packet), sequence, sequence * 960, 42, 1.0, targets, sequence == 2)
    skip(1, 42, targets)  # a late packet changes nothing
    skip(7, 99, targets)  # nor does one of another stream
    fan(_packet(7, 7 * 960, 42, b"p"), 12, 13, 7, 7 * 960, 42, 1.0, targets)
    assert [rtp.sequence_number(p) for p in capture.packets] == [100, 101, 102, 103, 104]
    assert [p[1] >> 7 for p in capture.packets] == [0, 1, 0, 0, 1], "2 forced, 7 its own"
    assert core.sent(102) == (5, 42, False), "a NACK for 102 finds 5, not the skipped 3"
    assert core.sent(101) == (2, 42, True), "with the marker it went out with"
    assert core.sent(105) is None
    again = _packet(5, 5 * 960, 42, b"payload")
    core.forward(again, 12, len(again), 5, 5 * 960, 42, 2.0, False, 102)
    assert rtp.sequence_number(capture.packets[-1]) == 102, "resent under its first number"
    assert rtp.timestamp(capture.packets[-1]) == rtp.timestamp(capture.packets[2])


@pytest.mark.parametrize(
    ("core_cls", "sink_cls", "fan"),
    [
        (fanout.PyDownTrackCore, fanout.PySink, fanout.py_fanout),
        (_fastsend.DownTrackCore, _fastsend.Sink, _fastsend.fanout),
    ],
)
def test_a_new_source_takes_the_timeline_its_sender_reports_give(
    core_cls: Any, sink_cls: Any, fan: Any
) -> None:
    capture = Capture()
    core = _core(core_cls, sink_cls(capture), first_timestamp=1000)

    def send(sequence: int, timestamp: int, ssrc: int, now: float) -> int:
        packet = _packet(sequence, timestamp, ssrc, b"p")
        fan(packet, 12, 13, sequence, timestamp, ssrc, now, {"s": core})
        return rtp.timestamp(capture.packets[-1])

    assert send(1, 50_000, 7, 1.0) == 1001
    assert send(2, 50_960, 7, 1.02) == 1961
    core.expect_source(8, 4_000_000_000, 2950)  # what the reports say this packet maps to
    assert send(90, 4_000_000_000, 8, 1.04) == 2950, "the reports' mapping, not the clock's"
    core.expect_source(9, 10, 2900)  # would run backwards: the wall clock's estimate instead
    assert send(5, 10, 9, 1.06) == 2950 + 960
    core.expect_source(7, 51_920, 2950 + 960 + 48_000 * 2)  # two seconds off the estimate
    assert send(3, 51_920, 7, 1.08) == 2950 + 960 * 2


def _vp8(sequence: int, ssrc: int, picture: int, tl0: int, keyidx: int) -> bytes:
    """RFC 7741: X, then I L T K, a 15-bit picture id, TL0PICIDX, TID/Y/KEYIDX, payload."""
    descriptor = bytes((0x90, 0xF0, 0x80 | picture >> 8, picture & 0xFF, tl0, 0x40 | keyidx, 0x00))
    return _packet(sequence, sequence * 3000, ssrc, descriptor + b"vp8", pt=96)


@pytest.mark.parametrize(
    ("core_cls", "sink_cls", "fan"),
    [
        (fanout.PyDownTrackCore, fanout.PySink, fanout.py_fanout),
        (_fastsend.DownTrackCore, _fastsend.Sink, _fastsend.fanout),
    ],
)
def test_vp8_picture_ids_continue_across_a_change_of_source(
    core_cls: Any, sink_cls: Any, fan: Any
) -> None:
    capture = Capture()
    core = _core(core_cls, sink_cls(capture), payload_types={96: 96}, red_payload_type=-1)
    core.vp8 = True
    stream = [
        _vp8(1, 7, 32766, 254, 30),
        _vp8(2, 7, 32767, 255, 31),
        _vp8(900, 8, 5000, 17, 3),  # another layer: its own numbering
        _vp8(901, 8, 5001, 18, 4),
        _vp8(899, 8, 4999, 16, 2),  # late, from before the switch: dropped
    ]
    for packet in stream:
        _, start, end = rtp.header_end(packet)
        fields = (rtp.sequence_number(packet), rtp.timestamp(packet), rtp.ssrc(packet))
        fan(packet, start, end, *fields, 1.0, {"s": core})
    at = 12 + len(EXTENSION) + 2  # the picture id, after X and I L T K
    pictures = [(p[at] & 0x7F) << 8 | p[at + 1] for p in capture.packets]
    assert pictures == [32766, 32767, 0, 1], "continued, wrapping at 15 bits"
    assert [p[at + 2] for p in capture.packets] == [254, 255, 0, 1]
    assert [p[at + 3] & 0x1F for p in capture.packets] == [30, 31, 0, 1]
    assert all(p[at + 3] & 0x40 for p in capture.packets), "the other bits are kept"


@pytest.mark.parametrize("seed", range(12))
def test_transport_numbers_rtx_and_padding_alike_on_both_paths(seed: int) -> None:
    """With transport-wide numbers and RTX negotiated: forwarded packets, retransmissions (on
    the RTX stream) and padding probes come out byte for byte alike, and reading the same
    feedback against what each sent gives the same groups and counts."""
    rng = random.Random(1000 + seed)
    packets = _random_stream(rng)
    extension = rtp.build_extension_block([(1, b"3"), (5, b"\x00\x00")])
    twcc_at = extension.index(b"\x51") + 1  # after the (id 5, length 2) element header
    actions = [rng.choice(("forward",) * 6 + ("resend", "pad", "skip")) for _ in packets]
    first_number = rng.randrange(65536)
    results = []
    for cls, sink_cls, fan in (
        (fanout.PyDownTrackCore, fanout.PySink, fanout.py_fanout),
        (_fastsend.DownTrackCore, _fastsend.Sink, _fastsend.fanout),
    ):
        capture = Capture()
        sink = sink_cls(capture)
        sink.enable_twcc(first_number)
        core = _core(cls, sink, extension=extension)
        core.twcc_at = twcc_at
        core.set_rtx(0xCAFE, 97, 4000)
        skip = fanout.py_skip if fan is fanout.py_fanout else _fastsend.skip
        sent_numbers: list[int] = []
        for (packet, now), action in zip(packets, actions, strict=True):
            _, start, end = rtp.header_end(packet)
            fields = (rtp.sequence_number(packet), rtp.timestamp(packet), rtp.ssrc(packet))
            if action == "skip":
                skip(fields[0], fields[2], {"s": core})
            elif action == "pad":
                core.pad(rng.randrange(0, 4), rng.randrange(1, 256), now)
            elif action == "resend" and capture.packets:
                out = rtp.sequence_number(capture.packets[-1])
                core.forward(packet, start, end, *fields, now, False, out)
            else:
                fan(packet, start, end, *fields, now, {"s": core})
        sent_numbers = [struct.unpack_from("!H", p, 12 + twcc_at)[0] for p in capture.packets]
        arrivals: list[float | None] = [
            None if rng.random() < 0.1 else 10 + i * rng.random() * 0.01
            for i in range(len(sent_numbers))
        ]
        fci, _ = twcc.write_feedback(first_number, arrivals, 0)
        feedback = sink.twcc_feedback(fci)
        results.append((capture.packets, core.packets, core.padding_packets, feedback))
        rng = random.Random(1000 + seed)  # both paths draw the same numbers
        _random_stream(rng)
        [rng.choice(("forward",) * 6 + ("resend", "pad", "skip")) for _ in packets]
        rng.randrange(65536)
    assert results[0][0], "the reference sent nothing"
    assert results[1] == results[0]
    numbers = [struct.unpack_from("!H", p, 12 + twcc_at)[0] for p in results[0][0]]
    assert numbers == [(first_number + i) & 0xFFFF for i in range(len(numbers))]
    rtx = [p for p in results[0][0] if p[1] & 0x7F == 97]
    assert all(rtp.ssrc(p) == 0xCAFE for p in rtx)
    assert results[0][3][1] > 0, "the feedback matched packets sent"


@pytest.mark.parametrize("seed", range(8))
def test_garbled_feedback_reads_alike_and_safely(seed: int) -> None:
    """Feedback is network input: truncated, bit-flipped or random FCIs are read the same way
    by both paths, never past their end."""
    rng = random.Random(seed)
    sinks = [fanout.PySink(Capture()), _fastsend.Sink(Capture())]
    extension = rtp.build_extension_block([(5, b"\x00\x00")])
    cores = (fanout.PyDownTrackCore, _fastsend.DownTrackCore)
    for sink, cls in zip(sinks, cores, strict=True):
        sink.enable_twcc(100)
        core = _core(cls, sink, extension=extension)
        core.twcc_at = 5
        for index, (packet, now) in enumerate(_stream()[:40]):
            _, start, end = rtp.header_end(packet)
            core.forward(packet, start, end, 100 + index, 960 * index, 1111, now)
    arrivals: list[float | None] = [1.0 + i * 0.004 for i in range(40)]
    good, _ = twcc.write_feedback(100, arrivals, 0)
    for _ in range(300):
        fci = bytearray(good)
        roll = rng.random()
        if roll < 0.3:
            fci = fci[: rng.randrange(len(fci))]
        elif roll < 0.7:
            for _ in range(rng.randrange(1, 4)):
                fci[rng.randrange(len(fci))] ^= 1 << rng.randrange(8)
        else:
            fci = bytearray(rng.randbytes(rng.randrange(0, 80)))
        results = [sink.twcc_feedback(bytes(fci)) for sink in sinks]
        assert results[0] == results[1]
    assert sinks[0].twcc_feedback(good)[1] == 40


def test_extension_lookup_alike_on_both_paths() -> None:
    """The transport-wide number of every received packet is read in C: random and garbled
    headers give what the Python reference gives."""
    rng = random.Random(3)
    for _ in range(3000):
        elements = [(rng.randrange(1, 15), rng.randbytes(rng.randrange(1, 4))) for _ in range(3)]
        if rng.random() < 0.2:
            elements.append((rng.randrange(1, 255), rng.randbytes(rng.randrange(1, 20))))
        block = bytearray(rtp.build_extension_block(elements))
        packet = bytearray(struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + block + b"payload")
        for _ in range(rng.randrange(0, 3)):
            packet[rng.randrange(len(packet))] ^= 1 << rng.randrange(8)
        if rng.random() < 0.2:
            packet = packet[: rng.randrange(len(packet))]
        ident = rng.choice([e[0] for e in elements])
        assert _fastsend.extension_u16(bytes(packet), ident) == rtp.extension_u16(
            bytes(packet), ident
        )
