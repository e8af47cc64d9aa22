"""``livekit-py-server load-test``: check the server, prepare the clips, run, report."""

from __future__ import annotations

import logging
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence

from loadtest import control
from loadtest.media import MediaError
from loadtest.params import Params, TesterSpec, parse_args, plan
from loadtest.report import ProgressPrinter, as_json, table
from loadtest.runner import prepare_media
from loadtest.stats import summarize
from loadtest.tester import PROTOCOL_VERSION, join_token, ws_base

PROG = "livekit-py-server load-test"
PREFLIGHT_TIMEOUT_S = 10.0


class PreflightError(Exception):
    """The server cannot be used: unreachable, or it refuses our key."""


def preflight(params: Params) -> None:
    """Ask ``/rtc/validate`` (what LiveKit's clients ask after a failed join) with a token of
    ours: a refused connection, an unknown host or a 401 end the run with one clear line."""
    base = ws_base(params.url)
    http = base.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    spec = TesterSpec(-1, f"{params.identity_prefix}_check", False, False, True)
    query = urllib.parse.urlencode(
        {"access_token": join_token(params, spec), "protocol": PROTOCOL_VERSION, "sdk": "python"}
    )
    try:
        with urllib.request.urlopen(f"{http}/rtc/validate?{query}", timeout=PREFLIGHT_TIMEOUT_S):
            return
    except urllib.error.HTTPError as exc:
        body = exc.read(300).decode(errors="replace").strip()
        exc.close()
        if exc.code == 401:
            raise PreflightError(
                f"{base} refused the API key or secret (HTTP 401: {body or 'unauthorized'})"
            ) from None
        if exc.code == 404:
            return  # no /rtc/validate on this server: the WebSocket will tell
        raise PreflightError(f"{base} answered HTTP {exc.code}: {body}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, socket.gaierror):
            host = urllib.parse.urlsplit(base).hostname
            raise PreflightError(f"cannot resolve host {host!r}: {reason.strerror}") from None
        if isinstance(reason, ConnectionRefusedError):
            raise PreflightError(f"cannot reach {base}: connection refused") from None
        raise PreflightError(f"cannot reach {base}: {reason}") from None
    except OSError as exc:
        raise PreflightError(f"cannot reach {base}: {exc}") from None


def _title(params: Params) -> str:
    duration = f"{params.duration:g} s" if params.duration else "until interrupted"
    video = ""
    if params.video_publishers:
        layers = "simulcast" if len(params.layers) > 1 else "single layer"
        video = f" ({params.video_resolution}, {layers}, layout {params.layout})"
    return (
        f"Load test, room {params.room}: {params.video_publishers} video and "
        f"{params.audio_publishers} audio publishers{video}, "
        f"{params.subscribers} subscribers, {duration}"
    )


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    params = parse_args(argv)
    try:
        return _run(params)
    except KeyboardInterrupt:
        return 130


def _run(params: Params) -> int:
    try:
        preflight(params)
        prepare_media(params)  # encoded here once; worker processes read the cache
    except (PreflightError, MediaError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    printer = ProgressPrinter()
    print(_title(params), file=sys.stderr)
    run = control.run_workers if params.workers > 1 else control.run_local
    try:
        testers, window, server_cpu = run(params, plan(params), printer)
    except RuntimeError as exc:  # a worker process failed
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    summary = summarize(params.room, testers, window, server_cpu)
    print(as_json(summary) if params.json else table(summary, _title(params)))
    not_joined = summary.participants - summary.joined
    if not_joined:
        first = summary.errors[0] if summary.errors else "unknown error"
        print(
            f"{PROG}: {not_joined} of {summary.participants} participants did not join "
            f"(first error: {first})",
            file=sys.stderr,
        )
        return 1
    return 0
