"""Several dispatcher processes on one database: no event twice, no row out of order."""

from __future__ import annotations

import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

from tests.conftest import FAST

ROOT = Path(__file__).resolve().parents[2]


def start_dispatchers(dsn: str, count: int, **env: str) -> list[subprocess.Popen[str]]:
    environ = os.environ | {f"ORCHESTRATOR_{k.upper()}": str(v) for k, v in FAST.items()}
    environ |= {"ORCHESTRATOR_DSN": dsn, "ORCHESTRATOR_CONCURRENCY": "4"} | env
    argv = [sys.executable, "-m", "orchestrator", "--log-level", "WARNING", "run",
            "--until-idle", "--handlers", "tests.support.jobs"]
    return [subprocess.Popen(argv, cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(count)]


def wait_all(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output


def test_two_dispatchers_never_run_an_event_twice_nor_apply_a_transition_twice(
        dsn: str, sql: Any) -> None:
    sql("INSERT INTO jobs (sleep_s) SELECT 0.05 FROM generate_series(1, 80)")
    wait_all(start_dispatchers(dsn, 2))
    assert sql("SELECT status, count(*) FROM jobs GROUP BY 1") == [("finished", 80)]
    transitions = sql("SELECT row_key, new_value, count(*) FROM orchestrator.event_log"
                      " GROUP BY 1, 2 HAVING count(*) > 1")
    assert transitions == []
    assert sql("SELECT count(*) FROM orchestrator.event_log WHERE outcome = 'applied'") == [(160,)]
    twice = sql("SELECT event_id FROM executions GROUP BY 1 HAVING count(*) > 1")
    assert twice == []
    assert sql("SELECT count(*) FROM job_effects") == [(80,)]
    # Both processes took part, or this test proved nothing.
    assert sql("SELECT count(DISTINCT pid) FROM executions") == [(2,)]


def test_a_rows_events_run_in_order_and_one_at_a_time_across_dispatchers(
        dsn: str, sql: Any) -> None:
    sql("INSERT INTO jobs (ret) SELECT 'nothing' FROM generate_series(1, 20)")
    for n in range(5):
        sql("UPDATE jobs SET note = %s", (f"note {n}",))
    wait_all(start_dispatchers(dsn, 2, JOBS_NOTE_SLEEP_S="0.02"))
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
