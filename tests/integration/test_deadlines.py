"""Deadlines: durable timers that move a row left too long in a state, once."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from orchestrator import Deadline, Workflow
from orchestrator.db import LISTEN_APPLICATION_NAME
from orchestrator.errors import DefinitionError
from tests.support import exactly_once
from tests.support.processes import dispatcher, finish, wait_for


def timers(sql: Any) -> list[tuple[Any, ...]]:
    return sql("SELECT row_key, old_value, new_value, status, outcome, handler"
               " FROM orchestrator.event_log WHERE op = 'TIMER' ORDER BY id")


def test_a_row_left_in_a_state_moves_on_at_its_deadline_once(sql: Any, run_idle: Any) -> None:
    (ticket,) = sql("INSERT INTO tickets DEFAULT VALUES RETURNING id")[0]
    (due,) = sql("SELECT run_after - created_at FROM orchestrator.event_log WHERE op = 'TIMER'")[0]
    assert due.total_seconds() == pytest.approx(1.0, abs=0.05)
    run_idle()  # waits for the timer: a pending deadline is open work
    assert sql("SELECT status FROM tickets") == [("escalated",)]
    assert timers(sql) == [(str(ticket), "open", "escalated", "done", "applied", "deadline")]
    escalation = sql("SELECT old_value, new_value, status FROM orchestrator.event_log"
                     " WHERE op = 'UPDATE' AND workflow = 'tickets'")
    assert escalation == [("open", "escalated", "done")]


def deadlines_passed(sql: Any) -> None:
    """Wait until every deadline timer is due (by the database's clock)."""
    wait_for(lambda: sql("SELECT bool_and(run_after < now()) FROM orchestrator.event_log"
                         " WHERE op = 'TIMER'")[0][0], timeout_s=30, what="the deadlines")


def test_leaving_the_state_first_cancels_the_deadline(sql: Any, run_idle: Any) -> None:
    sql("INSERT INTO tickets DEFAULT VALUES")
    sql("UPDATE tickets SET status = 'answered'")
    run_idle()
    assert timers(sql) == [("1", "open", "escalated", "done", "cancelled", None)]
    deadlines_passed(sql)
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
    deadlines_passed(sql)  # the deadline passes while nothing runs
    assert sql("SELECT status FROM tickets") == [("open",)]
    run_idle()
    assert sql("SELECT status FROM tickets") == [("escalated",)]


def test_deadlines_fire_once_with_several_dispatchers(dsn: str, sql: Any) -> None:
    # Three dispatchers, all running before any deadline comes due, each claiming at most two
    # timers at a time: the timers are shared out, and each still fires once.
    procs = [dispatcher(dsn, until_idle=False, handlers="tests.support.tickets",
                        batch_size="2") for _ in range(3)]
    try:
        wait_for(lambda: sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                             (LISTEN_APPLICATION_NAME,))[0][0] == 3
                 or any(p.poll() is not None for p in procs), what="three dispatchers")
        sql("INSERT INTO tickets SELECT FROM generate_series(1, 60)")
        wait_for(lambda: sql("SELECT count(*) FROM tickets WHERE status = 'escalated'")[0][0]
                 == 60, timeout_s=60, what="every ticket to be escalated")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            finish(proc)
    fired = sql("SELECT row_key, count(*) FROM orchestrator.event_log WHERE op = 'TIMER'"
                " AND outcome = 'applied' GROUP BY 1")
    assert len(fired) == 60 and {n for _, n in fired} == {1}
    assert sql("SELECT count(*) FROM orchestrator.event_log WHERE op = 'TIMER'") == [(60,)]
    assert sql("SELECT count(*) FROM witness_state_writes") == [(60,)]
    exactly_once.assert_no_state_written_twice(sql)
    claimants = sql("SELECT count(DISTINCT claimed_by) FROM orchestrator.event_log"
                    " WHERE op = 'TIMER'")[0][0]
    assert claimants >= 2, "one dispatcher fired every deadline: this proved nothing"


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
