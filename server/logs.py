"""Logging set-up: console text in development, one JSON object per line when ``logging.json``."""

from __future__ import annotations

import json
import logging
import sys
import time

#: Context fields attached once per object through LoggerAdapters (see ``sfu/participant.py``).
CONTEXT_FIELDS = ("worker", "room", "roomID", "participant", "pID", "trackID", "transport")
#: Loggers of the WebRTC libraries follow ``logging.pion_level`` (LiveKit's name for the same).
LIBRARY_LOGGERS = ("aiortc", "aioice", "pylibsrtp")
_LEVELS = {
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
    # aiohttp logs every request at INFO; keep its access log for debug runs only.
    logging.getLogger("aiohttp.access").setLevel(
        logging.INFO if level_of(level) <= logging.DEBUG else logging.WARNING
    )
