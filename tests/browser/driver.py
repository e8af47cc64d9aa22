"""Debian's Chromium running livekit-client, driven through ``tests/js/browser_driver.mjs``.

The driver is a Node.js process speaking one JSON command per line; this module starts it with
Chromium's fake capture devices fed from files it writes (a sine tone and a solid-colour
video), serves the test page, and turns each command into an awaitable call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import http.server
import itertools
import json
import math
import shutil
import struct
import subprocess
import threading
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PAGE_DIR = Path(__file__).resolve().parent / "page"
JS_DIR = ROOT / "tests" / "js"
CLIENT_BUNDLE = JS_DIR / "node_modules" / "livekit-client" / "dist" / "livekit-client.umd.js"
CHROMIUM = "/usr/bin/chromium"

TONE_HZ = 440.0
AUDIO_RATE = 48000
VIDEO_SIZE = (640, 360)
VIDEO_FPS = 15
COLOUR = (200, 40, 90)
"""RGB of the fake camera: far from grey, so a wrong plane or range shows."""

CALL_TIMEOUT_S = 30.0


def missing_requirements() -> str | None:
    """Why the tier cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (Debian's chromium package)"
    if not CLIENT_BUNDLE.exists():
        return "livekit-client is not installed (npm ci --prefix tests/js)"
    return None


def write_tone(path: Path, seconds: int = 1) -> None:
    """A mono 16-bit WAV of a whole number of periods, so Chromium's looping is seamless."""
    frames = AUDIO_RATE * seconds
    samples = (
        int(12000 * math.sin(2 * math.pi * TONE_HZ * index / AUDIO_RATE)) for index in range(frames)
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(AUDIO_RATE)
        out.writeframes(struct.pack(f"<{frames}h", *samples))


def _bt601_limited(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """RGB to limited-range BT.601 YCbCr, what browsers and libyuv assume for camera video."""
    r, g, b = (c / 255 for c in rgb)
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    return round(y), round(cb), round(cr)


def write_colour_video(path: Path, frames: int = VIDEO_FPS) -> None:
    """A Y4M file of solid-colour I420 frames; Chromium's fake camera loops it."""
    width, height = VIDEO_SIZE
    y, cb, cr = _bt601_limited(COLOUR)
    plane = bytes([y]) * (width * height)
    chroma = (width // 2) * (height // 2)
    frame = b"FRAME\n" + plane + bytes([cb]) * chroma + bytes([cr]) * chroma
    header = f"YUV4MPEG2 W{width} H{height} F{VIDEO_FPS}:1 Ip A1:1 C420jpeg\n".encode()
    path.write_bytes(header + frame * frames)


class PageServer:
    """Serves the test page and the livekit-client bundle over HTTP on 127.0.0.1, an origin
    other than the SFU's, as a real deployment would."""

    def __init__(self) -> None:
        handler = functools.partial(_PageHandler, directory=str(PAGE_DIR))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/index.html"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _PageHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/livekit-client.umd.js":
            body = CLIENT_BUNDLE.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        return


class BrowserError(RuntimeError):
    """A command failed inside the page or the driver."""


class Browser:
    """One Chromium process; pages are named and each has its own browser context.

    :param media_dir: where the fake capture files are written.
    :param log_path: receives the pages' console output and the driver's errors.
    """

    def __init__(self, media_dir: Path, log_path: Path, extra_flags: tuple[str, ...] = ()):
        tone, video = media_dir / "tone.wav", media_dir / "colour.y4m"
        write_tone(tone)
        write_colour_video(video)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self._proc = subprocess.Popen(
            ["node", str(JS_DIR / "browser_driver.mjs"), str(tone), str(video), *extra_flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=JS_DIR,
        )
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: dict[int, concurrent.futures.Future[Any]] = {}
        self._ready: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._waiting[0] = self._ready
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self._ready.result(timeout=30)
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            message = json.loads(line)
            with self._lock:
                future = self._waiting.pop(message["id"], None)
            if future is None:
                continue
            if "error" in message:
                future.set_exception(BrowserError(message["error"]))
            else:
                future.set_result(message["result"])
        with self._lock:
            pending, self._waiting = list(self._waiting.values()), {}
        for future in pending:
            future.set_exception(BrowserError(f"driver exited:\n{self.logs()}"))

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def _send(self, command: dict[str, Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            ident = next(self._ids)
            self._waiting[ident] = future
        assert self._proc.stdin is not None
        self._proc.stdin.write((json.dumps({"id": ident, **command}) + "\n").encode())
        self._proc.stdin.flush()
        return future

    async def call(self, command: dict[str, Any], within_s: float = CALL_TIMEOUT_S) -> Any:
        return await asyncio.wait_for(asyncio.wrap_future(self._send(command)), within_s)

    async def open(self, name: str, url: str) -> Page:
        await self.call({"cmd": "open", "page": name, "url": url})
        return Page(self, name)

    def close(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._log.close()


class Page:
    """One livekit-client page: ``run("lk.connect(...)")`` evaluates in the page."""

    def __init__(self, browser: Browser, name: str) -> None:
        self.browser = browser
        self.name = name
        self.joined: dict[str, Any] = {}
        """What ``lk.connect`` returned: the local sid and identity, and the signal URL."""

    async def run(self, js: str, within_s: float = CALL_TIMEOUT_S) -> Any:
        return await self.browser.call({"cmd": "eval", "page": self.name, "js": js}, within_s)

    async def lk(self, function: str, *args: Any, within_s: float = CALL_TIMEOUT_S) -> Any:
        """Call ``window.lk.<function>(*args)`` with JSON arguments."""
        arguments = ", ".join(json.dumps(a) for a in args)
        return await self.run(f"lk.{function}({arguments})", within_s)

    async def reload(self) -> None:
        await self.browser.call({"cmd": "reload", "page": self.name})

    async def close(self) -> None:
        await self.browser.call({"cmd": "close", "page": self.name})

    async def wait_for(
        self,
        function: str,
        predicate: Callable[[Any], bool],
        *args: Any,
        within_s: float = 20.0,
    ) -> Any:
        """Poll ``lk.<function>(*args)`` until ``predicate`` holds for its result; returns it."""
        deadline = asyncio.get_running_loop().time() + within_s
        while True:
            result = await self.lk(function, *args)
            if predicate(result):
                return result
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{self.name}: lk.{function} never matched: {result!r}")
            await asyncio.sleep(0.2)
