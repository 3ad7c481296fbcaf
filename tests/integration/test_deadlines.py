"""Deadlines: durable timers that move a row left too long in a state, once."""

from __future__ import annotations

import time
from typing import Any

import pytest

from orchestrator import Deadline, Workflow
from orchestrator.errors import DefinitionError


def timers(sql: Any) -> list[tuple[Any, ...]]:
    return sql("SELECT row_key, old_value, new_value, status, outcome, handler"
               " FROM orchestrator.events WHERE op = 'TIMER' ORDER BY id")


def test_a_row_left_in_a_state_moves_on_at_its_deadline_once(sql: Any, run_idle: Any) -> None:
    (ticket,) = sql("INSERT INTO tickets DEFAULT VALUES RETURNING id")[0]
    (due,) = sql("SELECT run_after - created_at FROM orchestrator.events WHERE op = 'TIMER'")[0]
    assert due.total_seconds() == pytest.approx(1.0, abs=0.05)
    run_idle()  # waits for the timer: a pending deadline is open work
    assert sql("SELECT status FROM tickets") == [("escalated",)]
    assert timers(sql) == [(str(ticket), "open", "escalated", "done", "applied", "deadline")]
    escalation = sql("SELECT old_value, new_value, status FROM orchestrator.events"
                     " WHERE op = 'UPDATE' AND workflow = 'tickets'")
    assert escalation == [("open", "escalated", "done")]


def test_leaving_the_state_first_cancels_the_deadline(sql: Any, run_idle: Any) -> None:
    sql("INSERT INTO tickets DEFAULT VALUES")
    sql("UPDATE tickets SET status = 'answered'")
    run_idle()
    assert timers(sql) == [("1", "open", "escalated", "done", "cancelled", None)]
    time.sleep(1.2)
    run_idle()
    assert sql("SELECT status FROM tickets") == [("answered",)]


def test_coming_back_to_the_state_sets_a_new_deadline(sql: Any, run_idle: Any) -> None:
    sql("INSERT INTO tickets DEFAULT VALUES")
    sql("UPDATE tickets SET status = 'answered'")
    sql("UPDATE tickets SET status = 'open'")
    run_idle()
    assert [t[3:5] for t in timers(sql)] == [("done", "cancelled"), ("done", "applied")]
    assert sql("SELECT status FROM tickets") == [("escalated",)]


def test_a_deadline_survives_with_no_dispatcher_running(sql: Any, run_idle: Any) -> None:
    sql("INSERT INTO tickets DEFAULT VALUES")
    time.sleep(1.2)  # the deadline passes while nothing runs
    assert sql("SELECT status FROM tickets") == [("open",)]
    run_idle()
    assert sql("SELECT status FROM tickets") == [("escalated",)]


def test_a_deadline_must_lead_somewhere_legal() -> None:
    spec: dict[str, Any] = {"table": "t", "states": ["a", "b", "c"], "initial": "a",
                            "terminal": ["c"], "transitions": [("go", "a", "b"),
                                                               ("end", "b", "c")]}
    with pytest.raises(DefinitionError, match="'a' -> 'c' is not a transition"):
        Workflow("wf", **spec, deadlines=[Deadline("a", 5, "c")])
    with pytest.raises(DefinitionError, match="positive"):
        Workflow("wf", **spec, deadlines=[Deadline("a", 0, "b")])
    wf = Workflow("wf", **spec, deadlines=[Deadline("a", 5, "b")])
    assert Workflow.from_definition(wf.definition()).deadlines == wf.deadlines
