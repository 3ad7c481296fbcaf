import json
import logging
import sys
from datetime import UTC, datetime

import pytest

from orchestrator.events import Event
from orchestrator.logs import EventLog, JsonFormatter, TextFormatter, printable
from orchestrator.outcomes import Outcome, Result


def event(attempt: int = 1) -> Event:
    return Event(id=7, workflow="food_order", key="12", column="status", op="UPDATE",
                 old_value="placed", new_value="validated", old_row={}, new_row={"id": 12},
                 attempt=attempt, created_at=datetime.now(UTC))


def test_json_formatter_writes_one_object_with_fields_and_traceback() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "hello %s", ("you",),
                                   exc_info=sys.exc_info())
    record.fields = {"event_id": 7}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "hello you" and data["level"] == "error" and data["event_id"] == 7
    assert data["time"].endswith("+00:00")
    assert "ValueError: bad" in data["exception"]


def test_event_log_reports_duration_and_forgets_it(caplog: pytest.LogCaptureFixture) -> None:
    log = EventLog()
    e = event()
    log.ran(e, "h.charge", 0.0125)
    with caplog.at_level(logging.INFO, logger="orchestrator.events"):
        log.finished(Result(e, Outcome.APPLIED, handler="h.charge"), Outcome.APPLIED)
        log.finished(Result(event(2), Outcome.DEAD, handler="h.charge", error="boom"),
                     Outcome.DEAD)
    applied, dead = caplog.records
    assert applied.getMessage() == ("event 7 food_order/12 status: placed -> validated: "
                                    "applied by charge in 12.5 ms (attempt 1)")
    assert applied.fields["duration_ms"] == 12.5  # type: ignore[attr-defined]
    assert dead.levelno == logging.WARNING
    assert dead.fields["duration_ms"] is None and dead.fields["error"] == "boom"  # type: ignore[attr-defined]
    assert log._durations == {}


def test_dead_events_are_logged_at_warning_level(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.events"):
        EventLog().finished(Result(event(), Outcome.APPLIED, handler="h.x"), Outcome.APPLIED)
        EventLog().finished(Result(event(4), Outcome.DEAD, handler="h.x", error="boom"),
                            Outcome.DEAD)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_a_text_line_cannot_be_forged_by_an_error_message() -> None:
    forged = "boom\n2026-12-01 10:00:00,000 INFO orchestrator.events: event 8 applied\r\x1b[2K"
    record = logging.LogRecord("orchestrator.events", logging.WARNING, __file__, 1,
                               "event 7 is dead: %s", (forged,), exc_info=None)
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line.endswith("event 7 is dead: boom\\n2026-12-01 10:00:00,000 INFO "
                         "orchestrator.events: event 8 applied\\r\\x1b[2K")


def test_a_traceback_keeps_its_lines_after_a_one_line_message() -> None:
    try:
        raise ValueError("bad\nworse")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed: %s", ("a\nb",),
                                   exc_info=sys.exc_info())
    first, *rest = TextFormatter().format(record).splitlines()
    assert first.endswith("failed: a\\nb")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "worse"


def test_printable_writes_out_controls_and_keeps_the_rest() -> None:
    assert printable("caf\u00e9\ttab \u202eevil\x9b\x00") == \
        "caf\u00e9\ttab \\u202eevil\\x9b\\x00"
