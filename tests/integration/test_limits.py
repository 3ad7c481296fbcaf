"""Fleet-wide limits: a handler's runs at once and per second, bounded across dispatchers."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import generate_latest

from orchestrator import Event, Limit, Workflow, admin, install
from orchestrator.app import Orchestrator
from orchestrator.config import Settings
from orchestrator.db import LISTEN_APPLICATION_NAME
from orchestrator.errors import DefinitionError, NotMigrated, RegistrationError
from orchestrator.metrics import Metrics
from orchestrator.registry import Registry
from orchestrator.schema import install_workflows
from tests.support import limited
from tests.support.processes import dispatcher, finish, wait_for


@pytest.fixture
def tasks_db(dsn: str, sql: Any) -> Iterator[str]:
    """The test database with the tasks table and the limited workflow installed."""
    sql(limited.TASKS_SQL)
    with psycopg.connect(dsn) as conn:
        install_workflows(conn, limited.tasks)
    yield dsn


def run_dispatchers(dsn: str, sql: Any, tasks: str, *, count: int = 2, concurrency: int = 8,
                    **env: str) -> None:
    """``count`` dispatcher processes, all listening before ``tasks`` (an INSERT) runs, stopped
    once every task is done."""
    procs = [dispatcher(dsn, until_idle=False, handlers="tests.support.limited",
                        concurrency=str(concurrency), LIMITED_LOG_DSN=dsn, **env)
             for _ in range(count)]
    try:
        wait_for(lambda: listening(sql) == count or any(p.poll() is not None for p in procs),
                 what=f"{count} dispatchers to listen")
        sql(tasks)
        wait_for(lambda: sql("SELECT count(*) FROM tasks WHERE status <> 'done'") == [(0,)],
                 timeout_s=120, what="every task to be done")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            finish(proc)


def listening(sql: Any) -> int:
    return int(sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                   (LISTEN_APPLICATION_NAME,))[0][0])


def most_at_once(runs: list[tuple[Any, Any]]) -> int:
    """The most runs whose [started, finished) intervals overlap at one moment."""
    edges = sorted([(s, 1) for s, _ in runs] + [(f, -1) for _, f in runs],
                   key=lambda edge: (edge[0], edge[1]))
    now = top = 0
    for _, step in edges:
        now += step
        top = max(top, now)
    return top


def test_dispatchers_never_run_a_limited_handler_more_than_its_bound_at_once(
        tasks_db: str, sql: Any) -> None:
    # Three dispatchers that each run one handler at a time: two runs at once need two of
    # them, and without the limit three would run at once.
    run_dispatchers(tasks_db, sql, "INSERT INTO tasks (sleep_s)"
                    " SELECT 0.05 FROM generate_series(1, 24)", count=3, concurrency=1)
    assert sql("SELECT status, count(*) FROM tasks GROUP BY 1") == [("done", 24)]
    runs = sql("SELECT started, finished FROM task_runs")
    assert len(runs) == 24
    # The bound held across processes, and was reached (or the test proved nothing).
    assert most_at_once(runs) == 2
    # Waiting used no attempt, and each event ran once.
    assert sql("SELECT max(attempt), count(DISTINCT event_id) FROM task_runs") == [(1, 24)]
    assert sql("SELECT waits > 0 FROM orchestrator.limits WHERE name = 'the_api'") == [(True,)]
    assert sql("SELECT count(DISTINCT pid) >= 2 FROM task_runs") == [(True,)]
    # What an operator sees: status and the metrics' gauges.
    with Orchestrator(Settings.load(env={}, dsn=tasks_db), Registry([limited.tasks])) as orch:
        (seen,) = admin.status(orch.reports)["limits"]
        exposed = generate_latest(Metrics(orch.registry, orch.reports).registry).decode()
    assert seen["name"] == "the_api" and seen["max_running"] == 2 and seen["running"] == 0
    assert seen["waits"] > 0
    assert 'orchestrator_limit_max_running{limit="the_api"} 2.0' in exposed
    assert f'orchestrator_limit_waits_total{{limit="the_api"}} {float(seen["waits"])}' in exposed


def test_a_rate_limit_spaces_the_starts_across_dispatchers(tasks_db: str, sql: Any) -> None:
    with psycopg.connect(tasks_db) as conn:  # the same workflow, with a rate of 10 a second
        install_workflows(conn, rate_limited(10.0))
    run_dispatchers(tasks_db, sql, "INSERT INTO tasks (sleep_s) SELECT 0 FROM"
                    " generate_series(1, 30)", LIMITED_PER_S="10")
    starts = [row[0] for row in sql("SELECT started FROM task_runs ORDER BY started")]
    assert len(starts) == 30
    # A bucket of 10 tokens refilled at 10 a second: at most 20 starts within any second.
    for i, first in enumerate(starts):
        within = [s for s in starts[i:] if s - first < timedelta(seconds=1)]
        assert len(within) <= 20, f"{len(within)} starts within a second from {first}"
    assert starts[-1] - starts[0] >= timedelta(seconds=1)


def rate_limited(per_s: float) -> Workflow:
    wf = Workflow.from_definition(limited.tasks.definition())
    wf.on_enter("queued", limit=Limit(max_running=2, per_s=per_s, name="the_api"))(limited.work)
    return wf


def test_migrate_writes_a_slot_per_run_at_once_and_resizes_them(tasks_db: str, sql: Any) -> None:
    assert sql("SELECT max_running, per_s FROM orchestrator.limits") == [(2, None)]
    assert sql("SELECT count(*) FROM orchestrator.limit_slots") == [(2,)]
    wf = Workflow.from_definition(limited.tasks.definition())
    wf.on_enter("queued", limit=Limit(max_running=5, name="the_api"))(limited.work)
    with psycopg.connect(tasks_db) as conn:
        install_workflows(conn, wf)
    slots = sql("SELECT slot FROM orchestrator.limit_slots ORDER BY 1")
    assert slots == [(n,) for n in range(1, 6)]


def test_a_dispatcher_with_other_limits_than_the_installed_ones_refuses_to_start(
        tasks_db: str) -> None:
    wf = Workflow.from_definition(limited.tasks.definition())
    wf.on_enter("queued", limit=Limit(max_running=3, name="the_api"))(limited.work)
    with psycopg.connect(tasks_db) as conn, pytest.raises(DefinitionError, match="limits differ"):
        install.verify(conn, [wf])


def test_limits_are_checked_when_declared() -> None:
    for bad in [{}, {"max_running": 0}, {"max_running": 1.5}, {"per_s": -1},
                {"per_s": float("inf")}, {"max_running": 1, "name": ""}]:
        with pytest.raises(RegistrationError):
            Limit(**bad)
    wf = Workflow.from_definition(limited.tasks.definition())
    with pytest.raises(RegistrationError, match="Limit"):
        wf.on_enter("queued", limit=3)  # type: ignore[arg-type]


def test_one_limit_name_with_two_bounds_is_refused() -> None:
    a = Workflow.from_definition(limited.tasks.definition())
    b = Workflow("tasks_b", table="public.tasks", states=["queued", "done"], initial="queued",
                 terminal=["done"], transitions=[("do", "queued", "done")])

    @a.on_enter("queued", limit=Limit(max_running=2, name="shared"))
    def one(event: Event) -> None: ...

    @b.on_enter("queued", limit=Limit(max_running=3, name="shared"))
    def two(event: Event) -> None: ...

    with pytest.raises(RegistrationError, match="'shared' is declared twice"):
        Registry([a, b])


def test_installing_a_limit_on_a_schema_before_limits_says_to_migrate(
        tasks_db: str, sql: Any) -> None:
    sql("DROP TABLE orchestrator.limit_slots, orchestrator.limits")
    with psycopg.connect(tasks_db) as conn, pytest.raises(NotMigrated, match="migrate"):
        install_workflows(conn, limited.tasks)


def test_events_over_a_limit_go_back_pending_without_using_an_attempt(
        tasks_db: str, sql: Any) -> None:
    sql("INSERT INTO tasks (sleep_s) SELECT 0 FROM generate_series(1, 3)")
    registry = Registry([limited.tasks])
    one_at_a_time = Limit(max_running=1, name="the_api")
    sql("DELETE FROM orchestrator.limit_slots WHERE slot > 1")
    with Orchestrator(Settings.load(env={}, dsn=tasks_db), registry) as a, \
            Orchestrator(Settings.load(env={}, dsn=tasks_db), registry) as b:
        a.store.use_workflows([limited.tasks])
        b.store.use_workflows([limited.tasks])
        first = a.store.claim(2)
        second = b.store.claim(2)
        assert len(first) == 2 and len(second) == 1
        won = a.store.admit({one_at_a_time: [e.id for e in first]}, wait_s=30)
        assert won == {first[0].id}
        # b's event finds the one slot taken by a's running event.
        assert b.store.admit({one_at_a_time: [second[0].id]}, wait_s=30) == set()
        waiting = sql("SELECT id, attempts, status, run_after > now() + interval '20 s'"
                      " FROM orchestrator.events WHERE status = 'pending' ORDER BY id")
        assert waiting == [(first[1].id, 0, "pending", True), (second[0].id, 0, "pending", True)]
        # Once a's event is no longer running, its slot is free again, with nothing given back.
        a.store.release([first[0].id])
        sql("UPDATE orchestrator.events SET run_after = now()")
        (again,) = b.store.claim(1)
        assert b.store.admit({one_at_a_time: [again.id]}, wait_s=30) == {again.id}
    assert sql("SELECT waits FROM orchestrator.limits") == [(2,)]
