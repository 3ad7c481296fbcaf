"""A test workflow whose handlers do what each row asks: fail N times, sleep, return something.

Table ``jobs`` (created by tests.support.database): status new -> working -> finished, failure
state ``failed``, watched column ``note``. With JOBS_EXEC_LOG set to a DSN, every handler
execution is logged there on its own connection (outside the handler's transaction), so tests
can check that no event ran twice at once and that a row's events ran in order.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import psycopg

from orchestrator import Context, Event, Next, Retry, Workflow

jobs = Workflow(
    "jobs",
    table="public.jobs",
    states=["new", "working", "finished", "failed"],
    initial="new",
    terminal=["finished", "failed"],
    failure_state="failed",
    transitions=[("start", "new", "working"), ("finish", "working", "finished")],
    watch=["note"],
)

# ret = 'gate': the handler waits for advisory lock (GATE, job id), which a test holds.
GATE = 4242

RETURNS: dict[str, Any] = {
    "illegal": "finished",               # new -> finished is not a transition
    "unknown_state": "flying",
    "garbage": 42,
    "bad_column": Next("working", {"no_such_column": 1}),
    "nothing": None,
    "set_note": Next("working", {"note": "set by handler"}),
}


def _log(event: Event, started: datetime) -> None:
    dsn = os.environ.get("JOBS_EXEC_LOG")
    if not dsn:
        return
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO executions (event_id, job_id, column_name, attempt, pid, started,"
            " finished) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (event.id, int(event.key), event.column, event.attempt, os.getpid(), started,
             datetime.now(UTC)))


@jobs.on_enter("new", max_attempts=3, timeout_s=float(os.environ.get("JOBS_TIMEOUT_S", "1")))
def start(event: Event, ctx: Context) -> Any:
    started = datetime.now(UTC)
    row = event.new_row
    try:
        if event.attempt <= row["fail_times"]:
            raise RuntimeError(f"boom on attempt {event.attempt}")
        if row["sleep_s"]:  # JOBS_LATER_EXTRA_S: later attempts take that much longer
            extra = float(os.environ.get("JOBS_LATER_EXTRA_S", "0")) if event.attempt > 1 else 0
            time.sleep(row["sleep_s"] + extra)
        if row["ret"] == "exit":
            os._exit(3)  # the handler takes its whole process down
        if row["ret"] == "retry" and event.attempt == 1:
            raise Retry(delay_s=0.05, reason="asked to come back")
        if row["ret"] == "gate":  # wait, in its transaction, for the test to open the gate
            ctx.db.execute("SELECT pg_advisory_xact_lock(%s, %s)", (GATE, int(event.key)))
        ctx.db.execute("INSERT INTO job_effects (job_id, event_id, attempt, pid)"
                       " VALUES (%s, %s, %s, %s)",
                       (int(event.key), event.id, event.attempt, os.getpid()))
        if row["ret"] == "fail_after_write":
            raise RuntimeError("failed after writing")
        if row["ret"] in RETURNS:
            return RETURNS[row["ret"]]
        return "working"
    finally:
        _log(event, started)


@jobs.on("new", "working")
def finish(event: Event) -> str:
    started = datetime.now(UTC)
    _log(event, started)
    return "finished"


@jobs.on_change("note")
def noted(event: Event) -> None:
    started = datetime.now(UTC)
    time.sleep(float(os.environ.get("JOBS_NOTE_SLEEP_S", "0")))
    _log(event, started)
