"""Logging set-up: console text in development, one JSON object per line when ``logging.json``."""

from __future__ import annotations

import json
import logging
import sys
import time

from aiohttp.http_exceptions import HttpProcessingError

from sfu.guard import DROPPED, LOG_INTERVAL_S, Throttle

#: Context fields attached once per object through LoggerAdapters (see ``sfu/participant.py``).
CONTEXT_FIELDS = ("worker", "room", "roomID", "participant", "pID", "trackID", "transport")
#: Loggers of the WebRTC libraries follow ``logging.pion_level`` (LiveKit's name for the same).
LIBRARY_LOGGERS = ("aiortc", "aioice", "pylibsrtp")
TRACE = 5
logging.addLevelName(TRACE, "TRACE")
_LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _context(record: logging.LogRecord) -> dict[str, str]:
    return {k: str(v) for k in CONTEXT_FIELDS if (v := getattr(record, k, None)) is not None}


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = _context(record)
        if context:
            text += "  " + " ".join(f"{k}={v}" for k, v in context.items())
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_context(record))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class ProcessContext(logging.Filter):
    """Fields of the whole process (which worker of ``--workers`` it is) on every record."""

    def __init__(self, **fields: str) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            setattr(record, key, value)
        return True


class BadRequestLines(logging.Filter):
    """aiohttp logs an ERROR with a traceback for every malformed request (an over-long
    request line or header, garbage instead of HTTP): a flood of them would be a flood of
    tracebacks. Each is counted (``livekit_connection_dropped_total{reason="bad_http_request"}``)
    and at most one line per interval says how many there were."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        super().__init__()
        self._throttle = Throttle(interval_s)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        DROPPED["bad_http_request"] += 1
        refused = self._throttle.due(time.monotonic())
        if not refused:
            return False
        detail = str(error.message or type(error).__name__).strip()
        first_line = detail.splitlines()[0][:120] if detail else type(error).__name__
        record.msg = "refused %d malformed HTTP request(s); last: %s"
        record.args = (refused, first_line)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        return True


def add_process_context(**fields: str) -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(ProcessContext(**fields))


def level_of(name: str) -> int:
    return _LEVELS.get(name.lower(), logging.INFO)


def setup_logging(*, level: str, json_format: bool, library_level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_of(level))
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level_of(library_level))
    # asyncio's only DEBUG line is which selector it uses: noise in --dev.
    logging.getLogger("asyncio").setLevel(max(logging.INFO, level_of(level)))
    server_log = logging.getLogger("aiohttp.server")
    server_log.filters[:] = [f for f in server_log.filters if not isinstance(f, BadRequestLines)]
    server_log.addFilter(BadRequestLines())
    # aiohttp logs every request at INFO; keep its access log for debug runs only.
    logging.getLogger("aiohttp.access").setLevel(
        logging.INFO if level_of(level) <= logging.DEBUG else logging.WARNING
    )
