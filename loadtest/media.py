"""Test clips, encoded once with PyAV from FFmpeg's generated sources and cached on disk.

Video is VP8 from ``testsrc2`` (a moving test pattern with a frame counter), 30 fps, a
keyframe every 3 s, at each simulcast layer's size and bitrate; audio is Opus from a 440 Hz
``sine``, 20 ms frames at 48 kHz. A cache file holds one JSON header line and the frames,
each prefixed by its 4-byte length; files are written atomically, so concurrent runs are safe.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

#: Bump when the encoding changes, so older cache files are not reused.
CACHE_VERSION = 1
VIDEO_FPS = 30
VIDEO_SECONDS = 3
KEYFRAME_INTERVAL_FRAMES = 3 * VIDEO_FPS
VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000
AUDIO_FRAME_SAMPLES = 960  # 20 ms
AUDIO_SECONDS = 5
AUDIO_BITRATE = 32_000
_MAGIC = b"LKPYCLIP"


class MediaError(Exception):
    """The clips cannot be made (PyAV missing, or an encoder failed)."""


@dataclass(frozen=True)
class Clip:
    """Encoded frames to loop, with their timing."""

    codec: str
    """``VP8`` or ``opus``."""
    clock_rate: int
    frame_ticks: int
    """RTP timestamp increment per frame."""
    frames: tuple[bytes, ...]
    keyframes: tuple[int, ...] = ()
    """Indices of the keyframes (video)."""

    @property
    def period(self) -> float:
        return self.frame_ticks / self.clock_rate

    @property
    def bitrate(self) -> float:
        """Average payload bits per second over one loop."""
        seconds = len(self.frames) * self.period
        return sum(len(frame) for frame in self.frames) * 8 / seconds if seconds else 0.0


def video_clip(width: int, height: int, bitrate: int, cache_dir: Path) -> Clip:
    name = f"vp8-{width}x{height}-{bitrate}-{VIDEO_FPS}fps-{VIDEO_SECONDS}s-v{CACHE_VERSION}.clip"
    return _cached(cache_dir / name, lambda: _encode_video(width, height, bitrate))


def audio_clip(cache_dir: Path) -> Clip:
    name = f"opus-{AUDIO_CLOCK}-{AUDIO_BITRATE}-{AUDIO_SECONDS}s-v{CACHE_VERSION}.clip"
    return _cached(cache_dir / name, _encode_audio)


def _cached(path: Path, encode: Any) -> Clip:
    try:
        return read_clip(path)
    except (OSError, ValueError):
        pass
    clip: Clip = encode()
    try:
        write_clip(path, clip)
    except OSError as exc:
        raise MediaError(f"cannot write the clip cache {path}: {exc}") from exc
    return clip


def write_clip(path: Path, clip: Clip) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "codec": clip.codec,
        "clock_rate": clip.clock_rate,
        "frame_ticks": clip.frame_ticks,
        "keyframes": list(clip.keyframes),
        "count": len(clip.frames),
    }
    body = b"".join(struct.pack("!I", len(frame)) + frame for frame in clip.frames)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as out:
        out.write(_MAGIC + json.dumps(header).encode() + b"\n" + body)
    os.replace(temp, path)


def read_clip(path: Path) -> Clip:
    """A cached clip; ValueError when the file is not one (or is truncated)."""
    data = path.read_bytes()
    if not data.startswith(_MAGIC) or b"\n" not in data:
        raise ValueError(f"{path} is not a clip file")
    line, _, body = data[len(_MAGIC) :].partition(b"\n")
    header = json.loads(line)
    try:
        return _clip_from(header, body)
    except (KeyError, TypeError, ValueError, struct.error) as exc:
        raise ValueError(f"{path} is truncated or damaged: {exc}") from exc


def _clip_from(header: dict[str, Any], body: bytes) -> Clip:
    frames = []
    offset = 0
    for _ in range(int(header["count"])):
        (size,) = struct.unpack_from("!I", body, offset)
        frame = body[offset + 4 : offset + 4 + size]
        if len(frame) != size:
            raise ValueError("a frame is cut off")
        frames.append(frame)
        offset += 4 + size
    return Clip(
        codec=str(header["codec"]),
        clock_rate=int(header["clock_rate"]),
        frame_ticks=int(header["frame_ticks"]),
        frames=tuple(frames),
        keyframes=tuple(int(k) for k in header["keyframes"]),
    )


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        raise MediaError(
            "the load tester encodes its test clips with PyAV: pip install av "
            "(or livekit-py-server[loadtest])"
        ) from None
    return av


def _source(
    av: Any, source: str, arguments: str, format_filter: str, format_args: str
) -> tuple[Any, Any]:
    """(graph, sink) of a generator filter; the graph must outlive the sink."""
    graph = av.filter.Graph()
    head = graph.add(source, arguments)
    convert = graph.add(format_filter, format_args)
    sink = graph.add("buffersink" if format_filter == "format" else "abuffersink")
    head.link_to(convert)
    convert.link_to(sink)
    graph.configure()
    return graph, sink


def _encode_video(width: int, height: int, bitrate: int) -> Clip:
    av = _import_av()
    _graph, sink = _source(
        av, "testsrc2", f"size={width}x{height}:rate={VIDEO_FPS}", "format", "yuv420p"
    )
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, VIDEO_FPS)
    encoder.framerate = VIDEO_FPS
    encoder.bit_rate = bitrate
    encoder.gop_size = KEYFRAME_INTERVAL_FRAMES
    encoder.options = {
        "deadline": "realtime",
        "cpu-used": "16",
        "lag-in-frames": "0",
        "auto-alt-ref": "0",
        "keyint_min": str(KEYFRAME_INTERVAL_FRAMES),
        "threads": "2",
    }
    frames: list[bytes] = []
    for index in range(VIDEO_FPS * VIDEO_SECONDS):
        frame = sink.pull()
        frame.pts = index
        frame.time_base = encoder.time_base
        # The generator marks its frames as intra; left so, every frame would be a keyframe.
        frame.pict_type = av.video.frame.PictureType.NONE
        frames += [bytes(packet) for packet in encoder.encode(frame)]
    frames += [bytes(packet) for packet in encoder.encode(None)]
    # RFC 6386 section 9.1: bit 0 of the frame tag is 0 for a keyframe.
    keyframes = tuple(i for i, frame in enumerate(frames) if frame and not frame[0] & 1)
    if not frames or keyframes[:1] != (0,):
        raise MediaError(f"VP8 encoding at {width}x{height} gave no leading keyframe")
    return Clip("VP8", VIDEO_CLOCK, VIDEO_CLOCK // VIDEO_FPS, tuple(frames), keyframes)


def _encode_audio() -> Clip:
    av = _import_av()
    _graph, sink = _source(
        av,
        "sine",
        f"frequency=440:sample_rate={AUDIO_CLOCK}",
        "aformat",
        f"sample_fmts=s16:channel_layouts=mono:sample_rates={AUDIO_CLOCK}",
    )
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = AUDIO_CLOCK, "mono", "s16"
    encoder.bit_rate = AUDIO_BITRATE
    encoder.time_base = Fraction(1, AUDIO_CLOCK)
    encoder.options = {"frame_duration": "20", "application": "audio"}
    fifo = av.AudioFifo()
    frames: list[bytes] = []
    pts = 0
    wanted = AUDIO_SECONDS * AUDIO_CLOCK // AUDIO_FRAME_SAMPLES
    while len(frames) < wanted:
        fifo.write(sink.pull())
        while fifo.samples >= AUDIO_FRAME_SAMPLES and len(frames) < wanted:
            chunk = fifo.read(AUDIO_FRAME_SAMPLES)
            chunk.pts = pts
            pts += AUDIO_FRAME_SAMPLES
            frames += [bytes(packet) for packet in encoder.encode(chunk)]
    return Clip("opus", AUDIO_CLOCK, AUDIO_FRAME_SAMPLES, tuple(frames[:wanted]))
