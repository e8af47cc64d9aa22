from __future__ import annotations

import json
import logging

from server.logs import ConsoleFormatter, JsonFormatter


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
