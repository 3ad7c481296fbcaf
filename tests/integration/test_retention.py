"""Retention: finished events move from the queue to an hourly partitioned history, and leave it
by whole partitions, by hand or by the dispatchers themselves, one session at a time."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from itertools import pairwise
from typing import Any

import psycopg
import pytest

from orchestrator import admin, schema
from orchestrator.app import Orchestrator
from orchestrator.config import Settings
from orchestrator.registry import Registry
from orchestrator.reports import Reports
from orchestrator.retention import Retention, partition_width
from orchestrator.store import Store
from tests.integration.test_engine import insert_job

HISTORY_PARTITIONS = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'orchestrator.events_history'::regclass ORDER BY 1
"""


def finished_jobs(sql: Any, run_idle: Any, count: int) -> list[int]:
    """``count`` jobs run to their end: three done events each, in the queue."""
    ids = [insert_job(sql) for _ in range(count)]
    run_idle()
    return ids


def backdate(sql: Any, ids: list[int], age: str) -> None:
    """The jobs' events finished ``age`` ago (and were recorded a little before)."""
    sql("UPDATE orchestrator.events SET finished_at = now() - %s::interval,"
        " created_at = now() - %s::interval - interval '1 second'"
        " WHERE workflow = 'jobs' AND row_key = ANY(%s)", (age, age, [str(i) for i in ids]))


def dead_event(sql: Any, *, age: str = "10 days") -> int:
    job = insert_job(sql)
    (event,) = sql("UPDATE orchestrator.events SET status = 'dead', attempts = 5,"
                   " finished_at = now() - %s::interval, last_error = 'boom'"
                   " WHERE workflow = 'jobs' AND row_key = %s RETURNING id",
                   (age, str(job)))[0]
    sql("INSERT INTO orchestrator.event_errors (event_id, attempt, error) VALUES (%s, 5, 'x')",
        (event,))
    return int(event)


def in_log(sql: Any, ids: list[int]) -> int:
    return int(sql("SELECT count(*) FROM orchestrator.event_log"
                   " WHERE workflow = 'jobs' AND row_key = ANY(%s)",
                   ([str(i) for i in ids],))[0][0])


@pytest.fixture
def orch(settings: Settings, registry: Registry) -> Any:
    with Orchestrator(settings, registry) as orch:
        yield orch


@pytest.fixture
def store(orch: Orchestrator) -> Store:
    return orch.store


@pytest.fixture
def reports(orch: Orchestrator) -> Reports:
    return orch.reports


def test_finished_events_move_to_the_history_and_read_the_same(
        sql: Any, run_idle: Any, store: Store) -> None:
    old, new = finished_jobs(sql, run_idle, 3), finished_jobs(sql, run_idle, 2)
    backdate(sql, old, "2 hours")
    assert store.archive(after_s=10, max_rows=4) == 4
    assert store.archive(after_s=10, max_rows=100) == 5
    assert store.archive(after_s=10, max_rows=100) == 0
    assert sql("SELECT count(*) FROM orchestrator.events_history") == [(9,)]
    assert sql("SELECT count(*) FROM orchestrator.events WHERE status = 'done'") == [(6,)]
    assert in_log(sql, old) == 9 and in_log(sql, new) == 6
    assert len(sql(HISTORY_PARTITIONS)) in (1, 2)  # the hour two hours ago (and its neighbour)


def test_prune_by_hand_removes_old_finished_events_keeps_newer_and_dead_ones(
        sql: Any, run_idle: Any, reports: Reports, store: Store) -> None:
    old, recent = finished_jobs(sql, run_idle, 4), finished_jobs(sql, run_idle, 3)
    backdate(sql, old, "5 days")
    backdate(sql, recent, "2 hours")
    store.archive(after_s=10, max_rows=5)  # some in the history, some still in the queue
    dead = dead_event(sql)

    dry = admin.prune(reports, older_than="3d", dry_run=True)
    assert (dry["events"], dry["dry_run"]) == (12, True)
    assert in_log(sql, old) == 12 and sql("SELECT count(*) FROM orchestrator.prunes") == [(0,)]

    done = admin.prune(reports, older_than="3d")
    assert done["events"] == 12 and done["partitions"] >= 1
    assert in_log(sql, old) == 0 and in_log(sql, recent) == 9
    assert sql("SELECT status FROM orchestrator.events WHERE id = %s", (dead,)) == [("dead",)]
    assert admin.prune(reports, older_than="3d")["events"] == 0
    assert reports.pruned() is not None


def test_prune_dead_removes_dead_events_and_their_errors(
        sql: Any, reports: Reports) -> None:
    old, young = dead_event(sql, age="10 days"), dead_event(sql, age="1 hour")
    assert admin.prune_dead(reports, older_than="1d", workflow=None, handler=None,
                            dry_run=True)["events"] == 1
    assert admin.prune_dead(reports, older_than="1d", workflow="jobs", handler=None)[
        "events"] == 1
    assert sql("SELECT id FROM orchestrator.events WHERE status = 'dead'") == [(young,)]
    assert sql("SELECT count(*) FROM orchestrator.event_errors WHERE event_id = %s",
               (old,)) == [(0,)]
    assert admin.prune_dead(reports, older_than=None, workflow=None, handler=None)[
        "events"] == 1


def test_a_rows_timeline_says_when_its_older_history_was_pruned(
        sql: Any, run_idle: Any, reports: Reports, registry: Registry) -> None:
    (job,) = finished_jobs(sql, run_idle, 1)
    wf = registry.workflows["jobs"]
    assert admin.history(reports, wf, str(job))["pruned_before"] is None
    sql("UPDATE orchestrator.events SET finished_at = now() - interval '5 days'"
        " WHERE row_key = %s AND op = 'INSERT'", (str(job),))
    admin.prune(reports, older_than="1d")
    story = admin.history(reports, wf, str(job))
    assert [e["op"] for e in story["events"]] == ["UPDATE", "UPDATE"]
    assert story["pruned_before"] is not None
    assert "older history pruned" in str(admin.pruned_note(story["pruned_before"]))


def test_one_session_at_a_time_archives_or_prunes(
        dsn: str, sql: Any, run_idle: Any, store: Store) -> None:
    old = finished_jobs(sql, run_idle, 2)
    backdate(sql, old, "5 days")
    with psycopg.connect(dsn) as other:  # another dispatcher, in the middle of its prune
        other.execute("SELECT * FROM orchestrator.prune_v1(now() - interval '30 days',"
                      " false, false)")
        assert store.prune(timedelta(days=1)) is None
        assert store.archive(after_s=10, max_rows=100) is None
        assert Retention(store, timedelta(days=1)).prune() == 0
    pruned = store.prune(timedelta(days=1))
    assert pruned is not None and pruned.events == 6


def test_dispatchers_apply_the_retention_themselves(
        dsn: str, sql: Any, run_idle: Any, settings: Settings, registry: Registry) -> None:
    old, recent = finished_jobs(sql, run_idle, 3), finished_jobs(sql, run_idle, 2)
    backdate(sql, old, "3 days")
    backdate(sql, recent, "20 minutes")
    fleet = [Orchestrator(settings.replace(retention=timedelta(days=1)), registry)
             for _ in range(2)]
    dispatchers = []
    for orch in fleet:
        orch.__enter__()
        dispatchers.append(orch.dispatcher())
    threads = [threading.Thread(target=d.run) for d in dispatchers]
    for t in threads:
        t.start()
    archived = "SELECT count(*) FROM orchestrator.events_history"
    deadline = time.monotonic() + 20
    while (in_log(sql, old) or sql(archived) != [(6,)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    for d, t in zip(dispatchers, threads, strict=True):
        d.stop()
        t.join()
    for orch in fleet:
        orch.__exit__(None, None, None)
    assert in_log(sql, old) == 0 and in_log(sql, recent) == 6
    assert sql("SELECT count(*) FROM orchestrator.events WHERE status = 'done'"
               " AND finished_at < now() - interval '10 minutes'") == [(0,)]  # archived
    assert sql("SELECT count(*) FROM orchestrator.prunes") == [(1,)]


def test_upgrading_keeps_the_history_and_downgrading_brings_it_back(
        dsn: str, sql: Any, run_idle: Any, store: Store) -> None:
    old = finished_jobs(sql, run_idle, 3)  # a dispatcher needs the head's columns
    schema.downgrade(dsn, "0004")
    dead = dead_event(sql)
    before = sql("SELECT * FROM orchestrator.events ORDER BY id")
    schema.upgrade(dsn, "0006")  # the history's revisions; 0007 adds a column
    assert sql("SELECT * FROM orchestrator.event_log ORDER BY id") == before
    backdate(sql, old, "2 hours")
    assert store.archive(after_s=10, max_rows=100) == 9
    moved = sql("SELECT * FROM orchestrator.event_log ORDER BY id")

    schema.downgrade(dsn, "0004")
    assert sql("SELECT * FROM orchestrator.events ORDER BY id") == moved
    assert sql("SELECT count(*) FROM orchestrator.event_errors WHERE event_id = %s",
               (dead,)) == [(1,)]
    assert sql("SELECT to_regclass('orchestrator.events_history')") == [(None,)]
    schema.upgrade(dsn)


def test_partitions_are_as_wide_as_asked_and_never_overlap(
        sql: Any, run_idle: Any, store: Store, reports: Reports) -> None:
    hourly, daily, older = (finished_jobs(sql, run_idle, n) for n in (2, 2, 1))
    backdate(sql, hourly, "30 hours")
    assert store.archive(after_s=10, max_rows=100, width=timedelta(hours=1)) == 6
    backdate(sql, daily, "29 hours")  # beside the hourly partition: a day cut short around it
    backdate(sql, older, "4 days")
    assert store.archive(after_s=10, max_rows=100, width=timedelta(days=1)) == 9
    bounds = sql("SELECT lower, upper FROM orchestrator.history_partitions_v1() ORDER BY 1")
    assert len(bounds) >= 3
    assert all(upper <= lower for (_, upper), (lower, _) in pairwise(bounds))
    assert (bounds[-1][1] - bounds[-1][0]) <= timedelta(days=1)
    assert admin.prune(reports, older_than="1s", dry_run=True)["events"] == 15
    assert admin.prune(reports, older_than="1s")["events"] == 15
    assert in_log(sql, hourly + daily + older) == 0


def test_the_partitions_are_a_day_wide_for_a_retention_of_days() -> None:
    assert partition_width(timedelta(days=3)) == timedelta(days=1)
    assert partition_width(timedelta(hours=12)) == timedelta(hours=1)
