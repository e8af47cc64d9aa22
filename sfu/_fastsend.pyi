from collections.abc import Callable
from typing import Any

def send_batch(fd: int, datagrams: list[tuple[bytes, tuple[str, int]]], /) -> int: ...
def set_srtp_protect(address: int, max_plaintext: int, /) -> None: ...
def set_limits(reorder_window: int, max_plaintext: int, /) -> None: ...
def protect_failures() -> int: ...
def fanout(
    packet: bytes,
    payload_start: int,
    payload_end: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    now: float,
    downtracks: dict[Any, DownTrackCore],
    marker: bool = False,
    /,
) -> bool: ...
def skip(sequence: int, ssrc: int, downtracks: dict[Any, DownTrackCore], /) -> None: ...

class Sink:
    fast: bool
    def __init__(self, send: Callable[[memoryview], bool]) -> None: ...
    def set_fast(
        self,
        context: int,
        keepalive: object,
        fd: int,
        address: tuple[str, int],
        spill: Callable[[bytes, tuple[str, int]], None],
        /,
    ) -> bool: ...
    def clear_fast(self) -> None: ...
    def set_sessions(
        self,
        session_for: Callable[[DownTrackCore], tuple[int, object] | None],
        send_protected: Callable[[memoryview], bool],
        /,
    ) -> None: ...

class DownTrackCore:
    enabled: bool
    bound: bool
    red_accepted: bool
    vp8: bool
    needs_keyframe: bool
    packets: int
    octets: int
    @property
    def own_session(self) -> bool: ...
    def __init__(
        self,
        sink: Sink,
        ssrc_out: int,
        clock_rate: int,
        first_sequence: int,
        first_timestamp: int,
        extension: bytes,
        payload_types: dict[int, int],
        red_payload_type: int,
    ) -> None: ...
    def forward(
        self,
        packet: bytes,
        payload_start: int,
        payload_end: int,
        sequence: int,
        timestamp: int,
        ssrc: int,
        now: float,
        marker: bool = False,
        out_sequence: int = -1,
        /,
    ) -> bool: ...
    def sent(self, sequence: int, /) -> tuple[int, int, bool] | None: ...
    def expect_source(self, ssrc: int, timestamp_in: int, timestamp_out: int, /) -> None: ...
    def translate_timestamp(self, timestamp: int, /) -> int: ...
