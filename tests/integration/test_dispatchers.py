"""Several dispatcher processes on one database: no event twice, no row out of order."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import pairwise
from typing import Any

from orchestrator.db import LISTEN_APPLICATION_NAME
from tests.support import exactly_once
from tests.support.processes import dispatcher, finish, wait_for


@contextmanager
def dispatchers(dsn: str, sql: Any, count: int, **env: str) -> Iterator[None]:
    """``count`` dispatcher processes, each listening before the block starts (so that work
    placed inside it is there for all of them); stopped with SIGTERM afterwards."""
    procs = [dispatcher(dsn, until_idle=False, concurrency="4", **env) for _ in range(count)]
    try:
        wait_for(lambda: listening(sql) == count or any(p.poll() is not None for p in procs),
                 what=f"{count} dispatchers to listen")
        yield
    finally:
        stop(procs)


def listening(sql: Any) -> int:
    return int(sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                   (LISTEN_APPLICATION_NAME,))[0][0])


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        finish(proc)


def settled(sql: Any) -> Callable[[], bool]:
    return lambda: sql("SELECT count(*) FROM orchestrator.events"
                       " WHERE status IN ('pending', 'running')")[0][0] == 0


def test_two_dispatchers_never_run_an_event_twice_nor_apply_a_transition_twice(
        dsn: str, sql: Any) -> None:
    with dispatchers(dsn, sql, 2):
        sql("INSERT INTO jobs (sleep_s) SELECT 0.05 FROM generate_series(1, 80)")
        wait_for(settled(sql), timeout_s=120, what="every job to finish")
    assert sql("SELECT status, count(*) FROM jobs GROUP BY 1") == [("finished", 80)]
    assert sql("SELECT count(*) FROM orchestrator.event_log WHERE outcome = 'applied'") == [(160,)]
    twice = sql("SELECT event_id FROM executions GROUP BY 1 HAVING count(*) > 1")
    assert twice == []
    exactly_once.assert_no_state_written_twice(sql)
    exactly_once.assert_job_effects_once(sql)
    exactly_once.assert_jobs_executed(sql)
    # Both processes took part, or this test proved nothing.
    assert sql("SELECT count(DISTINCT pid) FROM executions") == [(2,)]


def test_a_rows_events_run_in_order_and_one_at_a_time_across_dispatchers(
        dsn: str, sql: Any) -> None:
    with dispatchers(dsn, sql, 2, JOBS_NOTE_SLEEP_S="0.02"):
        sql("INSERT INTO jobs (ret) SELECT 'nothing' FROM generate_series(1, 20)")
        for n in range(5):
            sql("UPDATE jobs SET note = %s", (f"note {n}",))
        wait_for(settled(sql), timeout_s=120, what="every event to finish")
    runs = sql("SELECT job_id, event_id, started, finished FROM executions"
               " WHERE column_name = 'note' ORDER BY job_id, started")
    assert len(runs) == 100
    by_job: dict[int, list[tuple[Any, ...]]] = {}
    for job_id, event_id, started, finished in runs:
        by_job.setdefault(job_id, []).append((event_id, started, finished))
    for job_id, job_runs in by_job.items():
        ids = [r[0] for r in job_runs]
        assert ids == sorted(ids), f"job {job_id} ran its events out of order: {ids}"
        for before, after in pairwise(job_runs):
            assert before[2] <= after[1], f"job {job_id}: events {before[0]}, {after[0]} overlap"
    assert sql("SELECT count(DISTINCT pid) FROM executions WHERE column_name = 'note'") == [(2,)]
