"""Logs: one line per finished attempt, readable by a person or, with ``--log-format json``,
one JSON object per line for log pipelines.

Each event line carries its fields (event id, workflow, row key, transition, attempt, handler,
outcome, duration) as ``record.fields``; the text format shows them in the message, the
JSON format as keys of their own.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from orchestrator.events import Event
from orchestrator.observe import Observer
from orchestrator.outcomes import Outcome, Result

log = logging.getLogger("orchestrator.events")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Characters that move a terminal's cursor or start a line: C0 and C1 controls but the tab, and
# the bidirectional overrides and isolates that reorder what is shown.
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def printable(text: str) -> str:
    """``text`` with its control characters written out (``\\n``, ``\\x1b``, ``\\u202e``), for
    text from outside (a handler's error, a remote's answer, a row's values) shown on one line
    of a log or a terminal, where it could otherwise start a forged line or send escape
    sequences."""
    return _CONTROLS.sub(_written_out, text)


def _written_out(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, one line per record: the message's control characters are written out
    (``printable``); a traceback, when there is one, follows on its own lines."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON: time (UTC, ISO 8601), level, logger, message, the event's
    fields when it has some, and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(fmt: str) -> None:
    """Use ``fmt`` (``text`` or ``json``) for every handler of the root logger."""
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)


def event_fields(event: Event) -> dict[str, Any]:
    """What identifies an attempt in a log line."""
    return {"event_id": event.id, "workflow": event.workflow, "row_key": event.key,
            "op": event.op, "transition": event.transition, "attempt": event.attempt}


class EventLog(Observer):
    """Logs each finished attempt: INFO when it applied, did nothing or is retried, WARNING when
    the event is dead. Lost claims are the dispatcher's to report."""

    def __init__(self) -> None:
        self._durations: dict[int, float] = {}  # event id -> handler run time, until written

    def ran(self, event: Event, handler: str, duration_s: float) -> None:
        self._durations[event.id] = duration_s

    def finished(self, result: Result, outcome: Outcome | None) -> None:
        duration_s = self._durations.pop(result.event.id, None)
        level = logging.WARNING if outcome is Outcome.DEAD else logging.INFO
        if outcome is None or not log.isEnabledFor(level):
            return
        event = result.event
        fields = event_fields(event) | {
            "handler": result.handler, "outcome": outcome.value,
            "duration_ms": None if duration_s is None else round(duration_s * 1000, 3),
        }
        where = f"event {event.id} {event.workflow}/{event.key} {event.transition}"
        took = "" if duration_s is None else f" in {duration_s * 1000:.1f} ms"
        if outcome is Outcome.RETRY:
            fields |= {"error": result.error, "retry_in_s": round(result.delay_s, 3)}
            log.info("%s: attempt %s failed%s, retry in %.1fs: %s", where, event.attempt, took,
                     result.delay_s, result.error, extra={"fields": fields})
        elif outcome is Outcome.DEAD:
            fields["error"] = result.error
            log.warning("%s is dead: %s", where, result.error, extra={"fields": fields})
        else:
            by = f" by {result.handler.rsplit('.', 1)[-1]}" if result.handler else ""
            log.info("%s: %s%s%s (attempt %s)", where, outcome.value, by, took, event.attempt,
                     extra={"fields": fields})
