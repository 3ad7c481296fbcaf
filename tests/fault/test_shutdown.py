"""Stopping a dispatcher and deploying past it, with real processes: SIGTERM releases what the
grace period could not finish, uncounted; other handlers installed by `migrate` stop a running
dispatcher within the definition check's 15 s."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

import pytest

from orchestrator.db import LISTEN_APPLICATION_NAME
from orchestrator.dispatcher import DEFINITION_CHECK_S
from tests.acceptance.test_cli import cli
from tests.support.processes import dispatcher, finish, wait_for

pytestmark = pytest.mark.fault


def held_by(sql: Any, proc: subprocess.Popen[str]) -> int:
    return int(sql("SELECT count(*) FROM orchestrator.events WHERE status = 'running'"
                   " AND claimed_by LIKE %s", (f"%:{proc.pid}:%",))[0][0])


def test_sigterm_releases_what_the_grace_period_did_not_finish_without_counting_it(
        dsn: str, sql: Any) -> None:
    sql("INSERT INTO jobs (sleep_s) SELECT 30 FROM generate_series(1, 4)")
    proc = dispatcher(dsn, until_idle=False, concurrency="4", shutdown_grace_s="1",
                      JOBS_TIMEOUT_S="60")
    wait_for(lambda: held_by(sql, proc) == 4 or proc.poll() is not None,
             what="four 30 s handlers to be running")
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    out = finish(proc, timeout_s=60)  # exit 0
    assert time.monotonic() - signalled < 10, "it waited for the handlers, not the 1 s grace"
    # Released as handlers still running, or, when the stop came while the claim was under
    # way, as claimed but not yet started.
    assert "released 4 events" in out, out
    # Back in the queue as if never claimed: the attempt is not counted, nothing is recorded.
    assert sql("SELECT status, attempts, claimed_by, lease_until, started_at"
               " FROM orchestrator.events") == [("pending", 0, None, None, None)] * 4
    assert sql("SELECT count(*) FROM orchestrator.event_errors") == [(0,)]
    assert sql("SELECT count(*) FROM job_effects") == [(0,)]
    assert sql("SELECT count(*) FROM executions") == [(0,)]  # none ran to its end


def test_a_running_dispatcher_stops_within_15_s_when_migrate_installs_other_handlers(
        dsn: str, sql: Any) -> None:
    proc = dispatcher(dsn, until_idle=False)
    try:
        wait_for(lambda: proc.poll() is not None or sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (LISTEN_APPLICATION_NAME,))[0][0] == 1, what="the dispatcher to run")
        deployed = cli("migrate", "--handlers", "tests.support.jobs_v2", "--dsn", dsn)
        assert deployed.returncode == 0, deployed.stderr
        installed = time.monotonic()
        wait_for(lambda: proc.poll() is not None, timeout_s=DEFINITION_CHECK_S + 30,
                 what="the dispatcher to stop")
        took_s = time.monotonic() - installed
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out
    assert "handlers differ from the installed ones" in out and "Traceback" not in out
    # The check runs every 15 s; the stop that follows it takes a moment more.
    assert took_s <= DEFINITION_CHECK_S + 2, f"stopped {took_s:.1f}s after the new definition"
