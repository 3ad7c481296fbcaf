"""Faults a deployment meets, with real processes and a real server of the test's own:
nothing lost, nothing applied twice."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from orchestrator.app import Orchestrator
from orchestrator.config import Settings
from orchestrator.db import LISTEN_APPLICATION_NAME
from orchestrator.dispatcher import Dispatcher
from orchestrator.embedded import EmbeddedServer
from tests.conftest import FAST
from tests.support import database, exactly_once
from tests.support import jobs as jobs_module
from tests.support.processes import dispatcher, finish, wait_for

pytestmark = pytest.mark.fault

NO_CHAOS = {"FAULT_RAISE": "0", "FAULT_HANG": "0", "FAULT_GARBAGE": "0", "FAULT_EXIT": "0"}


def q(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def on(dsn: str) -> exactly_once.Sql:
    """The ``sql`` fixture's shape, for a database of the test's own."""
    return lambda query, params=None: q(dsn, query, params)


def test_sigkilled_dispatchers_lose_nothing_and_apply_nothing_twice(
        own_server: tuple[EmbeddedServer, str]) -> None:
    _, dsn = own_server
    jobs = 300  # enough work that the steady dispatcher alone needs several seconds
    q(dsn, "INSERT INTO jobs (sleep_s) SELECT 0.05 FROM generate_series(1, %s)", (jobs,))
    settings = {"lease_s": "1.5", "concurrency": "2"}
    steady = dispatcher(dsn, until_idle=False, **settings)
    kills = 0
    try:
        for _ in range(3):
            victim = dispatcher(dsn, until_idle=False, **settings)
            try:
                wait_for(lambda v=victim: q(  # type: ignore[misc]
                    dsn, "SELECT count(*) FROM orchestrator.events WHERE status = 'running'"
                         " AND claimed_by LIKE %s", (f"%:{v.pid}:%",))[0][0] > 0,
                         what="the victim to hold claims")
            finally:
                victim.send_signal(signal.SIGKILL)  # in the middle of a batch
                victim.communicate()
            kills += 1
        wait_for(lambda: q(dsn, "SELECT count(*) FROM jobs WHERE status = 'finished'")[0][0]
                 == jobs, timeout_s=120, what="every job to finish")
    finally:
        steady.send_signal(signal.SIGTERM)
        finish(steady)
    assert kills == 3
    taken_over = q(dsn, "SELECT count(*) FROM orchestrator.event_errors"
                        " WHERE error LIKE 'lease expired%%'")[0][0]
    assert taken_over > 0, "no claim was taken over: the kills proved nothing"
    assert q(dsn, "SELECT count(*) FROM orchestrator.events WHERE status <> 'done'") == [(0,)]
    exactly_once.assert_no_state_written_twice(on(dsn))
    exactly_once.assert_job_effects_once(on(dsn))
    exactly_once.assert_jobs_executed(on(dsn))
    assert q(dsn, "SELECT count(DISTINCT job_id) FROM job_effects") == [(jobs,)]


def test_a_heartbeat_keeps_a_long_handler_from_being_taken_over(dsn: str, sql: Any) -> None:
    # Handlers run well past the lease (3 s, renewed every second); a dispatcher would have to
    # stall for 2 s for a claim to expire while its handler runs.
    sql("INSERT INTO jobs (sleep_s) SELECT 7 FROM generate_series(1, 4)")
    procs = [dispatcher(dsn, lease_s="3", concurrency="2", JOBS_TIMEOUT_S="60")
             for _ in range(2)]
    for proc in procs:
        finish(proc)
    assert sql("SELECT count(*) FROM jobs WHERE status = 'finished'") == [(4,)]
    assert sql("SELECT count(*) FROM orchestrator.event_errors") == [(0,)]
    assert sql("SELECT event_id FROM executions GROUP BY 1 HAVING count(*) > 1") == []
    assert sql("SELECT max(finished - started) > interval '6 s' FROM executions") == [(True,)]
    exactly_once.assert_job_effects_once(sql)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_the_database_restarting_mid_run_loses_nothing(
        own_server: tuple[EmbeddedServer, str], mode: str) -> None:
    server, dsn = own_server
    ids = [database.place_order(on(dsn), f"D-{n}", customer_id=1 + n % 20) for n in range(150)]
    # The demo's handlers, each call recorded outside its transaction (bench.chaos, no chaos).
    proc = dispatcher(dsn, handlers="bench.chaos", concurrency="8", WITNESS_DSN=dsn,
                      **NO_CHAOS)
    wait_for(lambda: q(dsn, "SELECT count(*) FROM orders WHERE status = 'delivered'")[0][0] > 10,
             what="the run to be under way")
    server.stop(mode)
    time.sleep(1.0)  # down for a while: the dispatcher must back off and wait, not give up
    server.start()
    out = finish(proc)
    assert "database unavailable" in out
    states = dict(q(dsn, "SELECT status, count(*) FROM orders GROUP BY 1"))
    assert sum(states.values()) == len(ids)
    assert set(states) <= {"delivered", "rejected", "failed"}, states
    assert q(dsn, "SELECT count(*) FROM orchestrator.events WHERE status IN"
                  " ('pending', 'running')") == [(0,)]
    exactly_once.assert_no_state_written_twice(on(dsn))
    exactly_once.assert_charged_once(on(dsn))
    exactly_once.assert_food_order_effects_once(on(dsn))
    exactly_once.assert_food_orders_executed(on(dsn))
    assert q(dsn, "SELECT count(*) FROM payments")[0][0] >= states.get("delivered", 0) > 0


def test_results_finished_during_a_database_outage_are_written_after(
        own_server: tuple[EmbeddedServer, str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    server, dsn = own_server
    settings = Settings.load({}, dsn=dsn, **FAST | {"lease_s": 60.0})
    q(dsn, "INSERT INTO jobs (ret) SELECT 'nothing' FROM generate_series(1, 4)")
    with Orchestrator(settings, database.test_registry()) as orch:
        orch.dispatcher(until_idle=True).run()
    q(dsn, "UPDATE jobs SET note = 'waiting'")  # four events for `noted`, which needs no db
    gate, arrived, ran = threading.Event(), [], []

    def held(event: Any, started: Any) -> None:  # noted's last step, held at a gate here
        arrived.append(event.id)
        gate.wait(60)
        ran.append((event.id, event.attempt))

    monkeypatch.delenv("JOBS_EXEC_LOG", raising=False)
    monkeypatch.setattr(jobs_module, "_log", held)
    notes = ("SELECT status, outcome, attempts FROM orchestrator.event_log"
             " WHERE column_name = 'note'")
    with running(settings):
        wait_for(lambda: len(arrived) == 4, what="the four handlers to be running")
        server.stop("fast")
        gate.set()  # they finish while the database is down
        wait_for(lambda: len(ran) == 4, what="the handlers to return")
        wait_for(lambda: "database unavailable" in caplog.text, timeout_s=30,
                 what="the dispatcher to fail writing their results")
        server.start()
        wait_for(lambda: q(dsn, notes) == [("done", "noop", 1)] * 4, timeout_s=60,
                 what="the results kept through the outage to be written")
    assert sorted(ran) == sorted({(event, 1) for event in arrived})  # none ran again
    assert q(dsn, "SELECT count(*) FROM orchestrator.event_errors") == [(0,)]


@contextmanager
def running(settings: Settings) -> Iterator[Dispatcher]:
    with Orchestrator(settings, database.test_registry()) as orch:
        worker = orch.dispatcher()
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            wait_for(lambda: worker._listener is not None and worker._listener.up,
                     what="LISTEN")
            yield worker
        finally:
            worker.stop()
            thread.join(timeout=30)


def listener_pid(dsn: str) -> int:
    rows = q(dsn, "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
             (LISTEN_APPLICATION_NAME,))
    assert len(rows) == 1, rows
    return int(rows[0][0])


def handled_without_polling(dsn: str) -> float:
    (job,) = q(dsn, "INSERT INTO jobs DEFAULT VALUES RETURNING id")[0]
    return wait_for(lambda: q(dsn, "SELECT status FROM jobs WHERE id = %s", (job,))[0][0]
                    == "finished", timeout_s=10, what="a NOTIFY to wake the dispatcher")


def test_a_terminated_listen_connection_is_replaced(
        own_server: tuple[EmbeddedServer, str]) -> None:
    _, dsn = own_server
    settings = Settings.load({}, dsn=dsn, **FAST | {"poll_interval_s": 60.0})
    with running(settings) as worker:
        old = listener_pid(dsn)
        q(dsn, "SELECT pg_terminate_backend(%s)", (old,))
        wait_for(lambda: worker._listener.reconnects >= 1 and worker._listener.up,  # type: ignore[union-attr]
                 what="the LISTEN connection to come back")
        assert listener_pid(dsn) != old
        handled_without_polling(dsn)


def test_events_recorded_while_listen_was_down_are_claimed_when_it_reconnects(
        own_server: tuple[EmbeddedServer, str]) -> None:
    _, dsn = own_server
    settings = Settings.load({}, dsn=dsn, **FAST | {"poll_interval_s": 60.0})
    with running(settings) as worker:
        handled_without_polling(dsn)  # the dispatcher is idle, waiting for a NOTIFY
        # A row change whose NOTIFY never reaches the dispatcher, as when it happens while the
        # LISTEN connection is down: the transaction sends none.
        with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
            conn.execute("SELECT set_config('orchestrator.quiet', 'on', true)")
            (job,) = conn.execute("INSERT INTO jobs DEFAULT VALUES RETURNING id").fetchone()
        time.sleep(1.0)  # nothing may claim it now: no NOTIFY came, the next poll is 60 s away
        assert q(dsn, "SELECT status FROM jobs WHERE id = %s", (job,)) == [("new",)]
        q(dsn, "SELECT pg_terminate_backend(%s)", (listener_pid(dsn),))
        wait_for(lambda: q(dsn, "SELECT status FROM jobs WHERE id = %s", (job,))[0][0]
                 == "finished", timeout_s=20, what="the catch-up claim after the reconnect")
        assert worker._listener is not None and worker._listener.reconnects >= 1


def test_a_silently_dead_listen_connection_is_detected(
        own_server: tuple[EmbeddedServer, str]) -> None:
    _, dsn = own_server
    settings = Settings.load({}, dsn=dsn, **FAST | {"poll_interval_s": 60.0,
                                                    "listen_ping_s": 0.5})
    with running(settings) as worker:
        frozen = listener_pid(dsn)
        os.kill(frozen, signal.SIGSTOP)  # the server side stops answering, sends no error
        try:
            wait_for(lambda: worker._listener.reconnects >= 1 and worker._listener.up,  # type: ignore[union-attr]
                     timeout_s=20, what="the frozen LISTEN connection to be replaced")
            handled_without_polling(dsn)
        finally:
            os.kill(frozen, signal.SIGCONT)


def test_a_long_transaction_elsewhere_does_not_stop_the_dispatcher(dsn: str, sql: Any) -> None:
    sql("INSERT INTO jobs SELECT FROM generate_series(1, 21)")
    (locked,) = sql("SELECT min(id) FROM jobs")[0]
    blocker = psycopg.connect(dsn)
    blocker.execute("SELECT txid_current()")  # an old snapshot, as a long report would hold
    blocker.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (locked,))
    settings = Settings.load({}, dsn=dsn, **FAST | {"lock_timeout_s": 0.3, "max_attempts": 50})
    with running(settings):
        try:
            wait_for(lambda: sql("SELECT count(*) FROM jobs WHERE status = 'finished'"
                                 " AND id <> %s", (locked,))[0][0] == 20,
                     timeout_s=60, what="the other rows to finish")
            wait_for(lambda: sql("SELECT count(*) FROM orchestrator.event_errors"
                                 " WHERE error LIKE '%%lock timeout%%'")[0][0] > 0,
                     timeout_s=30, what="the locked row's write-back to give up waiting")
            assert sql("SELECT status FROM jobs WHERE id = %s", (locked,)) == [("new",)]
        finally:
            blocker.rollback()
            blocker.close()
        wait_for(lambda: sql("SELECT status FROM jobs WHERE id = %s", (locked,))[0][0]
                 in ("finished", "failed"), timeout_s=60, what="the locked row to finish")
    assert sql("SELECT count(*) FROM orchestrator.events WHERE status IN"
               " ('pending', 'running')") == [(0,)]


def test_a_handler_that_kills_its_process_ends_dead_and_blocks_no_other_row(
        own_server: tuple[EmbeddedServer, str]) -> None:
    _, dsn = own_server
    q(dsn, "INSERT INTO jobs (ret) VALUES ('exit')")
    q(dsn, "INSERT INTO jobs SELECT FROM generate_series(1, 10)")
    deaths = 0
    for _ in range(8):  # a supervisor: restart the dispatcher whenever it dies
        proc = dispatcher(dsn, lease_s="1")
        out, _ = proc.communicate(timeout=120)
        if proc.returncode == 0:
            break
        assert proc.returncode == 3, out
        deaths += 1
    assert deaths == 3  # attempts 1-3 each took the process down; attempt 4 is refused
    # Run alone after the first crash, the bystanders lost one attempt at most, not their life.
    assert q(dsn, "SELECT status, count(*) FROM jobs GROUP BY 1 ORDER BY 1") == [
        ("failed", 1), ("finished", 10)]
    assert q(dsn, "SELECT max(attempts) FROM orchestrator.event_log e JOIN jobs j"
                  " ON j.id::text = e.row_key WHERE j.ret IS NULL AND e.workflow = 'jobs'"
                  " AND e.column_name = 'status' AND e.old_value IS NULL")[0][0] <= 2
    (error,) = q(dsn, "SELECT last_error FROM orchestrator.events WHERE status = 'dead'")[0]
    assert error.startswith("gave up: an earlier attempt never finished")
