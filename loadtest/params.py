"""Command-line flags (those of ``lk load-test``, plus ours) and the participant plan."""

from __future__ import annotations

import argparse
import math
import os
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

#: ``--video-resolution`` -> simulcast layers as (rid, width, height, bitrate), low to high.
#: Bitrates are those of LiveKit's load-test clips (``butterfly_720_2000``, ``_360_400``,
#: ``_180_150``).
LAYERS: dict[str, tuple[tuple[str, int, int, int], ...]] = {
    "low": (("q", 320, 180, 150_000),),
    "medium": (("q", 320, 180, 150_000), ("h", 640, 360, 400_000)),
    "high": (("q", 320, 180, 150_000), ("h", 640, 360, 400_000), ("f", 1280, 720, 2_000_000)),
}
#: ``--layout`` -> the video tiles a subscriber shows, as (width, height) per tile; further
#: video tracks are disabled (``lk load-test``'s ``loadtester.go``).
LAYOUTS: dict[str, tuple[tuple[int, int], ...]] = {
    "speaker": ((1280, 720),) + ((320, 180),) * 5,
    "3x3": ((640, 360),) * 9,
    "4x4": ((320, 180),) * 16,
    "5x5": ((320, 180),) * 25,
}
_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ms|h|m|s)")
_ALPHABET = string.ascii_lowercase + string.digits


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "livekit-py-server" / "loadtest"


@dataclass(frozen=True)
class Params:
    """One load test, as the flags describe it."""

    url: str
    api_key: str
    api_secret: str
    room: str
    audio_publishers: int
    video_publishers: int
    subscribers: int
    duration: float
    """Seconds of measurement once everyone has joined; 0 runs until interrupted."""
    num_per_second: float
    video_resolution: str
    simulcast: bool
    layout: str
    identity_prefix: str
    server_pid: int | None
    json: bool
    workers: int
    decrypt_every: int
    """Decrypt one packet in N per stream (0: every packet for small runs, else 1 in 16)."""
    cache_dir: Path
    join_timeout: float
    sink: bool = False
    """Subscribers let the kernel drop media once every track flows (``sink.py``)."""

    @property
    def publishers(self) -> int:
        return max(self.audio_publishers, self.video_publishers)

    @property
    def participants(self) -> int:
        return self.publishers + self.subscribers

    @property
    def tracks_per_subscriber(self) -> int:
        return self.audio_publishers + self.video_publishers

    @property
    def media_tracks_per_subscriber(self) -> int:
        """Tracks a subscriber should receive media on: video beyond the layout is disabled."""
        return self.audio_publishers + min(self.video_publishers, len(LAYOUTS[self.layout]))

    @property
    def layers(self) -> tuple[tuple[str, int, int, int], ...]:
        """The video layers each video publisher sends (one without simulcast)."""
        layers = LAYERS[self.video_resolution]
        return layers if self.simulcast else layers[-1:]

    def sample_every(self) -> int:
        if self.decrypt_every:
            return self.decrypt_every
        return 1 if self.subscribers * self.tracks_per_subscriber <= 64 else 16


@dataclass(frozen=True)
class TesterSpec:
    """One participant of the plan (``lk load-test``: publishers first, then subscribers)."""

    index: int
    identity: str
    audio: bool
    video: bool
    subscribe: bool

    @property
    def publishes(self) -> bool:
        return self.audio or self.video


def plan(params: Params) -> list[TesterSpec]:
    """Participant i publishes audio when i < audio publishers and video when i < video
    publishers; publishers do not subscribe; the rest only subscribe."""
    specs = []
    for index in range(params.participants):
        if index < params.publishers:
            specs.append(
                TesterSpec(
                    index=index,
                    identity=f"{params.identity_prefix}_pub_{index}",
                    audio=index < params.audio_publishers,
                    video=index < params.video_publishers,
                    subscribe=False,
                )
            )
        else:
            number = index - params.publishers
            identity = f"{params.identity_prefix}_sub_{number}"
            specs.append(TesterSpec(index, identity, audio=False, video=False, subscribe=True))
    return specs


def parse_duration(text: str) -> float:
    """Seconds from ``30``, ``30s``, ``1m30s``, ``500ms`` or ``1h`` (Go's duration syntax)."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if value < 0:
            raise argparse.ArgumentTypeError(f"negative duration {text!r}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"not a finite duration: {text!r}")
        return value
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 1m30s)")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(number) * scale[unit] for number, unit in parts)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livekit-py-server load-test",
        description="Load-test a LiveKit-compatible server with publishers and subscribers "
        "(the flags of `lk load-test`).",
    )
    add = parser.add_argument
    add("--url", help="server URL, ws:// or http:// (env LIVEKIT_URL)")
    add("--api-key", help="API key (env LIVEKIT_API_KEY)")
    add("--api-secret", help="API secret (env LIVEKIT_API_SECRET)")
    add("--room", help="room name (default: a random one)")
    add("--audio-publishers", type=_count, default=0, help="participants publishing audio")
    add("--video-publishers", "--publishers", type=_count, default=0, help="publishing video")
    add("--subscribers", type=_count, default=0, help="participants that only subscribe")
    add("--duration", type=parse_duration, default=0.0, help="e.g. 30s; 0 runs until Ctrl-C")
    add("--num-per-second", type=_positive, default=5.0, help="participants joining per second")
    add("--video-resolution", choices=sorted(LAYERS), default="high")
    add("--no-simulcast", action="store_true", help="publish a single video layer")
    add("--layout", choices=list(LAYOUTS), default="speaker", help="video tiles per subscriber")
    add("--identity-prefix", help="participant identity prefix (default: random)")
    add("--server-pid", type=int, help="report this server process tree's CPU time")
    add("--json", action="store_true", help="print the summary as JSON on stdout")
    add("--workers", type=_count, default=1, help="processes to spread participants over")
    add("--decrypt-every", type=_count, default=0, help="decrypt 1 packet in N (0: auto)")
    add("--cache-dir", type=Path, default=None, help="where encoded test clips are kept")
    add("--join-timeout", type=_positive, default=20.0, help="seconds one join may take")
    add(
        "--sink",
        action="store_true",
        help="subscribers drop media once every track flows (the server's metrics count "
        "what it forwards; ours stop there)",
    )
    return parser


def parse_args(argv: Sequence[str], env: Mapping[str, str] = os.environ) -> Params:
    """Parse and check the flags; argparse exits with status 2 on an error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    url = args.url or env.get("LIVEKIT_URL", "")
    api_key = args.api_key or env.get("LIVEKIT_API_KEY", "")
    api_secret = args.api_secret or env.get("LIVEKIT_API_SECRET", "")
    for flag, value in (("--url", url), ("--api-key", api_key), ("--api-secret", api_secret)):
        if not value:
            parser.error(f"{flag} is required (or its LIVEKIT_* environment variable)")
    if not re.match(r"^(wss?|https?)://[^/]", url):
        parser.error(f"--url must start with ws://, wss://, http:// or https://: {url!r}")
    try:
        _ = urlsplit(url).port  # urllib raises ValueError for a port that is not a number
    except ValueError as exc:
        parser.error(f"--url has a bad port: {url!r} ({exc})")
    if args.audio_publishers + args.video_publishers + args.subscribers == 0:
        parser.error("nothing to do: give --audio-publishers, --video-publishers or --subscribers")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.server_pid is not None and not Path(f"/proc/{args.server_pid}/stat").exists():
        parser.error(f"--server-pid {args.server_pid}: no such process")
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(5))
    return Params(
        url=url,
        api_key=api_key,
        api_secret=api_secret,
        room=args.room or f"loadtest-{suffix}",
        audio_publishers=args.audio_publishers,
        video_publishers=args.video_publishers,
        subscribers=args.subscribers,
        duration=args.duration,
        num_per_second=args.num_per_second,
        video_resolution=args.video_resolution,
        simulcast=not args.no_simulcast,
        layout=args.layout,
        identity_prefix=args.identity_prefix or f"lt{suffix}",
        server_pid=args.server_pid,
        json=args.json,
        workers=args.workers,
        decrypt_every=args.decrypt_every,
        cache_dir=args.cache_dir or default_cache_dir(),
        join_timeout=args.join_timeout,
        sink=args.sink,
    )
