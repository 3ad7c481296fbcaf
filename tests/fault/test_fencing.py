"""What the fence and the compare-and-set are for, with real processes: a dispatcher that wakes
from a pause after its claim was taken over writes nothing, and a row moved by someone else while
its handler runs keeps that move."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

import psycopg
import pytest

from tests.support import exactly_once
from tests.support.jobs import GATE
from tests.support.processes import dispatcher, finish, wait_for

pytestmark = pytest.mark.fault


def held_by(sql: Any, proc: subprocess.Popen[str]) -> int:
    """How many jobs events ``proc`` holds claims on."""
    return int(sql("SELECT count(*) FROM orchestrator.event_log WHERE workflow = 'jobs'"
                   " AND status = 'running' AND claimed_by LIKE %s", (f"%:{proc.pid}:%",))[0][0])


def stop(*procs: subprocess.Popen[str] | None) -> list[str]:
    """SIGTERM each (resumed first, should it be paused); their outputs, exit 0 checked."""
    outputs = []
    for proc in procs:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        if proc is not None:
            outputs.append(finish(proc, timeout_s=60))
    return outputs


def test_a_dispatcher_paused_past_its_lease_writes_nothing_when_it_wakes(
        dsn: str, sql: Any) -> None:
    (job,) = sql("INSERT INTO jobs (sleep_s) VALUES (6) RETURNING id")[0]
    settings = {"lease_s": "2", "JOBS_TIMEOUT_S": "60"}
    first = dispatcher(dsn, until_idle=False, **settings)
    second = None
    try:
        wait_for(lambda: held_by(sql, first) == 1, what="the first dispatcher to claim the job")
        # A stall (a GC pause, a VM migration): the first stops renewing its lease while its
        # handler is in the middle of the work.
        os.kill(first.pid, signal.SIGSTOP)
        try:
            # The stall may come between the first's claim and its handler's start (then both
            # handlers start together on SIGCONT): the take-over runs longer than all of the
            # first's run, so the first's handler ends while the second's claim is live.
            second = dispatcher(dsn, until_idle=False, JOBS_LATER_EXTRA_S="6", **settings)
            wait_for(lambda: held_by(sql, second) == 1, timeout_s=60,  # type: ignore[arg-type]
                     what="the second dispatcher to take the expired claim over")
        finally:
            os.kill(first.pid, signal.SIGCONT)
        # The first wakes with its handler nearly done; the second's has just begun.
        wait_for(lambda: sql("SELECT status FROM jobs WHERE id = %s", (job,))[0][0]
                 == "finished", timeout_s=60, what="the job to finish")
    finally:
        first_out = stop(first, second)[0]
    runs = sql("SELECT attempt, pid, finished FROM executions WHERE job_id = %s"
               " AND column_name = 'status' AND event_id = (SELECT min(event_id)"
               " FROM executions WHERE job_id = %s) ORDER BY attempt", (job, job))
    assert [(a, p) for a, p, _ in runs] == [(1, first.pid), (2, second.pid)]  # type: ignore[union-attr]
    assert runs[0][2] < runs[1][2], "the paused handler finished last: this proved nothing"
    # Only the run that held the claim wrote: its effects, its outcome.
    exactly_once.assert_job_effects_once(sql)
    exactly_once.assert_no_state_written_twice(sql)
    assert sql("SELECT attempt, pid FROM job_effects") == [(2, second.pid)]  # type: ignore[union-attr]
    assert "claim lost (lease expired?); outcome discarded" in first_out


def waiting_at_gate(sql: Any) -> int:
    return int(sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                   " AND classid = %s", (GATE,))[0][0])


def test_rows_moved_by_hand_while_their_handlers_run_keep_that_move(
        dsn: str, sql: Any) -> None:
    ids = [i for (i,) in sql("INSERT INTO jobs (ret) SELECT 'gate' FROM generate_series(1, 6)"
                             " RETURNING id")]
    moved = ids[::2]
    with psycopg.connect(dsn, autocommit=True) as gate:
        for job in ids:
            gate.execute("SELECT pg_advisory_lock(%s, %s)", (GATE, job))
        proc = dispatcher(dsn, until_idle=False, concurrency="8", JOBS_TIMEOUT_S="60")
        try:
            wait_for(lambda: waiting_at_gate(sql) == len(ids), timeout_s=60,
                     what="every handler to be running, held at the gate")
            # Someone else (an operator, another application) moves half the rows on.
            sql("UPDATE jobs SET status = 'working' WHERE id = ANY(%s)", (moved,))
            gate.execute("SELECT pg_advisory_unlock_all()")
            wait_for(lambda: sql("SELECT count(*) FROM jobs WHERE status = 'finished'")[0][0]
                     == len(ids), timeout_s=60, what="every job to finish")
        finally:
            stop(proc)
    exactly_once.assert_no_state_written_twice(sql)
    exactly_once.assert_job_effects_once(sql)
    outcomes = dict(sql("SELECT row_key::bigint, outcome FROM orchestrator.event_log"
                        " WHERE workflow = 'jobs' AND op = 'INSERT'"))
    assert outcomes == {job: "stale" if job in moved else "applied" for job in ids}
    assert sorted(j for (j,) in sql("SELECT job_id FROM job_effects")) == sorted(
        set(ids) - set(moved))
