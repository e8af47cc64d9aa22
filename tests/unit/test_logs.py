from __future__ import annotations

import json
import logging

from aiohttp.http_exceptions import LineTooLong

from server.logs import BadRequestLines, ConsoleFormatter, JsonFormatter
from sfu.guard import DROPPED


def _record(**context: str) -> logging.LogRecord:
    record = logging.LogRecord("sfu.room", logging.INFO, __file__, 1, "joined %s", ("bob",), None)
    for key, value in context.items():
        setattr(record, key, value)
    return record


def test_json_lines_carry_context() -> None:
    line = JsonFormatter().format(_record(room="r1", pID="PA_x"))
    entry = json.loads(line)
    assert entry["msg"] == "joined bob"
    assert entry["level"] == "info"
    assert entry["room"] == "r1"
    assert entry["pID"] == "PA_x"
    assert entry["logger"] == "sfu.room"


def test_console_appends_context() -> None:
    text = ConsoleFormatter().format(_record(room="r1", participant="bob"))
    assert text.endswith("room=r1 participant=bob")
    assert "joined bob" in text


def test_adapter_context_reaches_the_record() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("test.adapter")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    logging.LoggerAdapter(logger, {"room": "r9"}).info("hello")
    assert json.loads(JsonFormatter().format(records[0]))["room"] == "r9"


def test_malformed_http_requests_are_one_counted_line_not_tracebacks() -> None:
    flood = BadRequestLines(interval_s=60.0)
    before = DROPPED["bad_http_request"]
    kept = []
    for _ in range(50):
        error = LineTooLong("a" * 10000, "8190")
        record = logging.LogRecord(
            "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", (),
            (type(error), error, None),
        )  # fmt: skip
        if flood.filter(record):
            kept.append(record)
    assert DROPPED["bad_http_request"] == before + 50
    (line,) = kept
    assert line.levelno == logging.WARNING and line.exc_info is None
    assert "\n" not in line.getMessage() and "malformed HTTP" in line.getMessage()
    other = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "boom", (), None)
    assert flood.filter(other), "other errors pass untouched"
