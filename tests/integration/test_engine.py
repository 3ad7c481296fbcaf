"""The engine against a real PostgreSQL: capture, dispatch, write-back, failures."""

from __future__ import annotations

import subprocess
import threading
import time
from itertools import pairwise
from typing import Any

import psycopg
import pytest

from orchestrator.app import Orchestrator
from orchestrator.config import Settings
from orchestrator.embedded import POSTGRES_BIN_PATH
from orchestrator.errors import DefinitionError, NotMigrated
from orchestrator.registry import Registry
from tests.support import exactly_once
from tests.support.database import place_order
from tests.support.jobs import jobs
from tests.support.processes import wait_for


def events(sql: Any, job_id: int) -> list[tuple[Any, ...]]:
    return sql("SELECT column_name, old_value, new_value, status, outcome, attempts, last_error"
               " FROM orchestrator.events WHERE workflow = 'jobs' AND row_key = %s ORDER BY id",
               (str(job_id),))


def insert_job(sql: Any, **columns: Any) -> int:
    names = ", ".join(columns) or "status"
    marks = ", ".join(["%s"] * len(columns)) or "'new'"
    return int(sql(f"INSERT INTO jobs ({names}) VALUES ({marks}) RETURNING id",
                   tuple(columns.values()))[0][0])


def status(sql: Any, job_id: int) -> str:
    return str(sql("SELECT status FROM jobs WHERE id = %s", (job_id,))[0][0])


def test_trigger_records_insert_and_real_changes_only(sql: Any) -> None:
    job = insert_job(sql)
    sql("UPDATE jobs SET status = 'new' WHERE id = %s", (job,))           # no change
    sql("UPDATE jobs SET fail_times = 3 WHERE id = %s", (job,))           # unwatched column
    sql("UPDATE jobs SET note = 'hello' WHERE id = %s", (job,))           # watched column
    rows = sql("SELECT op, column_name, old_value, new_value, old_row IS NULL, new_row ->> 'id'"
               " FROM orchestrator.events ORDER BY id")
    assert rows == [("INSERT", "status", None, "new", True, str(job)),
                    ("UPDATE", "note", None, "hello", False, str(job))]


def test_row_inserted_by_psql_runs_to_a_terminal_state(dsn: str, sql: Any, run_idle: Any) -> None:
    psql = POSTGRES_BIN_PATH / "psql"
    subprocess.run([str(psql), "-X", "-q", "-d", dsn, "-c", "INSERT INTO jobs DEFAULT VALUES"],
                   check=True, capture_output=True)
    (job,) = sql("SELECT id FROM jobs")[0]
    assert sql("SELECT count(*) FROM orchestrator.events WHERE status = 'pending'") == [(1,)]
    stats = run_idle()
    assert status(sql, job) == "finished"
    assert [(r[1], r[2], r[3], r[4]) for r in events(sql, job)] == [
        (None, "new", "done", "applied"),
        ("new", "working", "done", "applied"),
        ("working", "finished", "done", "no_handler"),  # recorded finished: no handler serves it
    ]
    assert events(sql, job)[-1][5] == 0  # never claimed
    assert stats.applied == 2 and stats.no_handler == 0 and stats.handed_off == 1


def test_events_written_while_no_dispatcher_ran_are_handled_on_start(
        sql: Any, run_idle: Any) -> None:
    ids = [insert_job(sql) for _ in range(25)]
    assert sql("SELECT count(*) FROM orchestrator.events WHERE status = 'pending'") == [(25,)]
    run_idle(concurrency=4, batch_size=5)
    assert {status(sql, i) for i in ids} == {"finished"}
    assert sql("SELECT count(*) FROM orchestrator.events WHERE status <> 'done'") == [(0,)]


def test_food_order_chain_runs_itself_to_the_end(sql: Any, run_idle: Any) -> None:
    good = place_order(sql, "T-1")
    bad = place_order(sql, "T-2", total_cents=1)
    run_idle()
    rows = dict(sql("SELECT id, status FROM orders"))
    assert rows == {good: "delivered", bad: "rejected"}
    history = sql("SELECT new_value FROM orchestrator.events WHERE row_key = %s"
                  " AND workflow = 'food_order' AND op <> 'TIMER' ORDER BY id", (str(good),))
    assert [h[0] for h in history] == ["placed", "validated", "paid", "approved",
                                       "agent_assigned", "picked_up", "delivered"]


def test_a_failing_handler_is_retried_then_succeeds(sql: Any, run_idle: Any) -> None:
    job = insert_job(sql, fail_times=2)
    stats = run_idle()
    assert status(sql, job) == "finished"
    first = events(sql, job)[0]
    assert first[3:6] == ("done", "applied", 3)
    errors = sql("SELECT attempt, error FROM orchestrator.event_errors ORDER BY attempt")
    assert errors == [(1, "RuntimeError: boom on attempt 1"),
                      (2, "RuntimeError: boom on attempt 2")]
    assert stats.retried == 2
    assert sql("SELECT count(*) FROM job_effects") == [(1,)]
    exactly_once.assert_job_effects_once(sql)  # written by attempt 3, the one that finished


def test_exhausted_attempts_make_the_event_dead_and_the_row_failed(
        sql: Any, run_idle: Any) -> None:
    job = insert_job(sql, fail_times=5)
    stats = run_idle()
    first = events(sql, job)[0]
    assert first[3:6] == ("dead", "dead", 3)
    assert first[6] == "RuntimeError: boom on attempt 3 (attempt 3 of 3)"
    assert status(sql, job) == "failed"
    assert stats.dead == 1 and stats.retried == 2


def test_backoff_spaces_the_attempts(sql: Any, run_idle: Any) -> None:
    job = insert_job(sql, fail_times=2)
    run_idle(retry_base_s=0.3, retry_max_s=1.0)
    assert status(sql, job) == "finished"
    starts = sql("SELECT started FROM executions WHERE event_id ="
                 " (SELECT min(event_id) FROM executions WHERE job_id = %s) ORDER BY attempt",
                 (job,))
    gaps = [(b[0] - a[0]).total_seconds() for a, b in pairwise(starts)]
    # attempt 1 -> 2 waits 0.15-0.3 s, attempt 2 -> 3 waits 0.3-0.6 s (plus claim latency)
    assert len(gaps) == 2
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3


def test_retry_raised_by_the_handler_comes_back_after_its_delay(sql: Any, run_idle: Any) -> None:
    job = insert_job(sql, ret="retry")
    stats = run_idle()
    assert status(sql, job) == "finished"
    assert stats.retried == 1
    assert sql("SELECT error FROM orchestrator.event_errors") == [
        ("Retry: asked to come back",)]


def test_a_handler_past_its_timeout_fails_and_is_retried(sql: Any, run_idle: Any) -> None:
    job = insert_job(sql, sleep_s=3.0)  # the handler's timeout is 1 s, 3 attempts
    stats = run_idle()
    assert status(sql, job) == "failed"
    assert stats.timed_out == 3
    errors = [e[0] for e in sql("SELECT error FROM orchestrator.event_errors ORDER BY attempt")]
    assert errors[:2] == ["handler timed out after 1s"] * 2
    assert errors[2].startswith("handler timed out after 1s (attempt 3 of 3)")
    assert sql("SELECT count(*) FROM job_effects") == [(0,)]


@pytest.mark.parametrize("ret,message", [
    ("illegal", "IllegalTransition: workflow 'jobs' does not allow 'new' -> 'finished'"),
    ("unknown_state", "IllegalTransition: workflow 'jobs' does not allow 'new' -> 'flying'"),
    ("garbage", "BadOutcome: handler returned int 42"),
    ("bad_column", "BadOutcome: handler returned values for unknown columns ['no_such_column']"),
])
def test_an_illegal_or_malformed_outcome_is_dead_at_once_and_writes_nothing(
        sql: Any, run_idle: Any, ret: str, message: str) -> None:
    job = insert_job(sql, ret=ret)
    run_idle()
    first = events(sql, job)[0]
    assert first[3:6] == ("dead", "dead", 1)
    assert first[6].startswith(message)
    assert status(sql, job) == "failed"
    assert sql("SELECT count(*) FROM job_effects") == [(0,)]  # the handler's write rolled back


def test_handler_writes_commit_with_the_outcome_and_roll_back_with_a_failure(
        sql: Any, run_idle: Any) -> None:
    ok = insert_job(sql)
    broken = insert_job(sql, ret="fail_after_write")
    run_idle()
    assert status(sql, ok) == "finished"
    assert status(sql, broken) == "failed"
    effects = sql("SELECT job_id FROM job_effects")
    assert effects == [(ok,)]
    exactly_once.assert_job_effects_once(sql)


def test_a_write_back_the_database_refuses_is_a_failed_attempt(sql: Any, run_idle: Any) -> None:
    sql("ALTER TABLE jobs ADD CONSTRAINT note_short CHECK (length(note) < 5)")
    job = insert_job(sql, ret="set_note")  # Next("working", {"note": "set by handler"})
    stats = run_idle()
    assert events(sql, job)[0][3:6] == ("dead", "dead", 3)
    assert status(sql, job) == "failed"
    refused = ('write-back failed: new row for relation "jobs" violates check constraint'
               ' "note_short"')
    errors = [e[0] for e in sql("SELECT error FROM orchestrator.event_errors ORDER BY id")]
    assert len(errors) == 3 and all(e.startswith(refused) for e in errors)
    assert errors[2].endswith("(attempt 3 of 3)")
    assert stats.retried == 2 and stats.dead == 1 and stats.lost == 0
    assert sql("SELECT count(*) FROM job_effects") == [(0,)]  # rolled back with the outcome


def test_values_are_written_with_the_state(sql: Any, run_idle: Any) -> None:
    job = insert_job(sql, ret="set_note")
    run_idle()
    assert sql("SELECT status, note FROM jobs") == [("finished", "set by handler")]
    columns = [(r[0], r[2]) for r in events(sql, job)]
    assert ("note", "set by handler") in columns


def test_returning_nothing_leaves_the_row_alone(sql: Any, run_idle: Any) -> None:
    job = insert_job(sql, ret="nothing")
    stats = run_idle()
    assert status(sql, job) == "new"
    assert events(sql, job)[0][3:5] == ("done", "noop")
    assert stats.noop == 1


def test_a_stale_event_changes_nothing(settings: Settings, registry: Registry, sql: Any) -> None:
    job = insert_job(sql)
    with Orchestrator(settings, registry) as orch:
        orch.store.use_workflows([jobs])
        (event,) = orch.store.claim(10)
        # The row moves on (an operator, another app) while the handler is running.
        sql("UPDATE jobs SET status = 'working' WHERE id = %s", (job,))
        from orchestrator.events import Next
        from orchestrator.outcomes import Outcome, Result
        report = orch.store.finish([Result(event, Outcome.APPLIED, handler="h",
                                           next=Next("working", {"note": "stale write"}))])
    assert report.outcomes == {event.id: "stale"}
    assert sql("SELECT status, note FROM jobs") == [("working", None)]


def test_one_finish_writes_a_batch_with_each_results_own_outcome(
        settings: Settings, registry: Registry, sql: Any) -> None:
    ids = [insert_job(sql) for _ in range(5)]
    from orchestrator.events import Next
    from orchestrator.outcomes import Outcome, Result
    with Orchestrator(settings, registry) as orch:
        orch.store.use_workflows([jobs])
        claimed = {int(e.key): e for e in orch.store.claim(10)}
        a, b, c, d, e = (claimed[i] for i in ids)
        sql("UPDATE jobs SET status = 'working' WHERE id = %s", (ids[2],))  # c's row moves on
        report = orch.store.finish([
            Result(a, Outcome.APPLIED, handler="h", next=Next("working", {"note": "a"})),
            Result(b, Outcome.APPLIED, handler="h",  # the same columns, values of other types
                   next=Next("working", {"note": None, "fail_times": 7})),
            Result(c, Outcome.APPLIED, handler="h", next=Next("working", {"note": "c"})),
            Result(d, Outcome.DEAD, handler="h", next=Next("failed"), error="gave up"),
            Result(e, Outcome.RETRY, handler="h", error="later", delay_s=60),
        ])
    assert report.outcomes == {a.id: "applied", b.id: "applied", c.id: "stale", d.id: "dead",
                               e.id: "retry"}
    assert sql("SELECT status, note, fail_times FROM jobs ORDER BY id") == [
        ("working", "a", 0), ("working", None, 7), ("working", None, 0), ("failed", None, 0),
        ("new", None, 0)]
    assert sql("SELECT row_key::bigint, status, outcome, next_state FROM orchestrator.events"
               " WHERE id = ANY(%s) ORDER BY id", ([x.id for x in (a, b, c, d, e)],)) == [
        (ids[0], "done", "applied", "working"), (ids[1], "done", "applied", "working"),
        (ids[2], "done", "stale", "working"), (ids[3], "dead", "dead", "failed"),
        (ids[4], "pending", None, None)]
    assert sql("SELECT event_id, attempt, error FROM orchestrator.event_errors ORDER BY id") == [
        (d.id, 1, "gave up"), (e.id, 1, "later")]


def test_a_write_back_sets_array_and_json_columns_from_their_text(
        settings: Settings, registry: Registry, sql: Any) -> None:
    sql("ALTER TABLE jobs ADD COLUMN tags text[], ADD COLUMN meta jsonb")
    ids = [insert_job(sql), insert_job(sql)]
    from orchestrator.events import Next
    from orchestrator.outcomes import Outcome, Result
    with Orchestrator(settings, registry) as orch:
        orch.store.use_workflows([jobs])
        first, second = sorted(orch.store.claim(10), key=lambda e: e.id)
        report = orch.store.finish([
            Result(first, Outcome.APPLIED, handler="h",
                   next=Next("working", {"tags": "{a,b}", "meta": {"n": 1}})),
            Result(second, Outcome.APPLIED, handler="h",
                   next=Next("working", {"tags": "{c}", "meta": {"n": 2}})),
        ])
    assert report.outcomes == {first.id: "applied", second.id: "applied"}
    assert sql("SELECT id, tags, meta FROM jobs ORDER BY id") == [
        (ids[0], ["a", "b"], {"n": 1}), (ids[1], ["c"], {"n": 2})]


def test_a_finish_after_losing_the_lease_is_discarded(
        settings: Settings, registry: Registry, sql: Any) -> None:
    insert_job(sql)
    with Orchestrator(settings.replace(lease_s=0.1), registry) as orch:
        orch.store.use_workflows([jobs])
        (event,) = orch.store.claim(10)
        wait_for(lambda: orch.store.requeue_expired() == [event.id], timeout_s=30,
                 what="the 0.1 s lease to expire and the event to be requeued")
        assert orch.store.claim(10) == []  # suspect now: claimed apart, to run alone
        (again,) = orch.store.claim(10, suspect=True)
        assert again.id == event.id and again.attempt == 2
        from orchestrator.outcomes import Outcome, Result
        late = orch.store.finish([Result(event, Outcome.NOOP)])
        assert late.outcomes == {}
        on_time = orch.store.finish([Result(again, Outcome.NOOP)])
        assert on_time.outcomes == {event.id: "noop"}
    assert sql("SELECT error FROM orchestrator.event_errors") == [
        (f"lease expired: dispatcher {orch.store.dispatcher} stopped renewing it",)]


def test_released_events_are_pending_again_with_the_attempt_not_counted(
        settings: Settings, registry: Registry, sql: Any) -> None:
    insert_job(sql)
    insert_job(sql)
    with Orchestrator(settings, registry) as orch:
        orch.store.use_workflows([jobs])
        first, second = orch.store.claim(10)
        assert orch.store.release([first.id]) == 1
        assert orch.store.release(all_but=[second.id]) == 0  # nothing else is claimed
        (again,) = orch.store.claim(10)
        assert again.id == first.id and again.attempt == 1
        assert orch.store.release(all_but=[]) == 2
    assert sql("SELECT status, attempts, claimed_by, lease_until FROM orchestrator.events") == [
        ("pending", 0, None, None)] * 2


def test_claims_keep_one_event_per_row_at_a_time(
        settings: Settings, registry: Registry, sql: Any) -> None:
    job = insert_job(sql)
    sql("UPDATE jobs SET note = 'one' WHERE id = %s", (job,))
    sql("UPDATE jobs SET note = 'two' WHERE id = %s", (job,))
    other = insert_job(sql)
    with Orchestrator(settings, registry) as orch:
        orch.store.use_workflows([jobs])
        first = orch.store.claim(10)
        assert [(e.key, e.column) for e in first] == [(str(job), "status"), (str(other), "status")]
        assert orch.store.claim(10) == []  # the row's later events wait for the first


def test_the_database_refuses_illegal_writes_from_anyone(sql: Any) -> None:
    import psycopg
    job = insert_job(sql)
    with pytest.raises(psycopg.errors.CheckViolation, match="does not allow 'new' -> 'finished'"):
        sql("UPDATE jobs SET status = 'finished' WHERE id = %s", (job,))
    with pytest.raises(psycopg.errors.CheckViolation, match="must start in its initial state"):
        sql("INSERT INTO jobs (status) VALUES ('working')")
    sql("BEGIN")
    sql("SET LOCAL orchestrator.override = 'on'")
    sql("UPDATE jobs SET status = 'finished' WHERE id = %s", (job,))
    sql("COMMIT")
    assert status(sql, job) == "finished"


def test_a_notify_wakes_an_idle_dispatcher_long_before_the_poll(
        settings: Settings, registry: Registry, sql: Any) -> None:
    with Orchestrator(settings.replace(poll_interval_s=30.0), registry) as orch:
        dispatcher = orch.dispatcher()
        thread = threading.Thread(target=dispatcher.run)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while not (dispatcher._listener and dispatcher._listener.up):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            job = insert_job(sql)
            while status(sql, job) != "finished":
                assert time.monotonic() < deadline, "not handled within 10 s (poll is 30 s)"
                time.sleep(0.01)
        finally:
            dispatcher.stop()
            thread.join(timeout=30)
    assert not thread.is_alive()


def test_a_dispatcher_refuses_an_unmigrated_or_different_definition(
        admin_dsn: str, settings: Settings, registry: Registry, sql: Any) -> None:
    from orchestrator import Workflow
    changed = Workflow("jobs", table="public.jobs", states=["new", "working", "finished"],
                       initial="new", terminal=["finished"],
                       transitions=[("start", "new", "working")])
    with Orchestrator(settings, Registry([changed])) as orch, \
            pytest.raises(DefinitionError, match="states or transitions in the database differ"):
        orch.dispatcher().run()
    from tests.support import database
    name = database.unique_name()
    bare = database.create_database(admin_dsn, name)
    try:
        with Orchestrator(settings.replace(dsn=bare), registry) as orch, \
                pytest.raises(NotMigrated, match="run `orchestrator migrate`"):
            orch.dispatcher().run()
    finally:
        database.drop_database(admin_dsn, name)


def test_a_dispatcher_with_other_handlers_refuses_to_run(
        settings: Settings, sql: Any) -> None:
    from orchestrator import Workflow
    fewer = Workflow.from_definition(jobs.definition())

    @fewer.on_enter("new")
    def start(event: Any) -> str:
        return "working"

    with Orchestrator(settings, Registry([fewer])) as orch, pytest.raises(
            DefinitionError, match=r"handlers differ .*missing here: note:\*->\*, "
                                   r"status:new->working; other handler: status:\*->new"):
        orch.dispatcher().run()


def test_a_running_dispatcher_stops_when_another_definition_is_installed(
        settings: Settings, registry: Registry, sql: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator import dispatcher as dispatcher_module
    monkeypatch.setattr(dispatcher_module, "DEFINITION_CHECK_S", 0.2)
    with Orchestrator(settings, registry) as orch:
        dispatcher = orch.dispatcher()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                dispatcher.run()
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        sql("UPDATE orchestrator.workflows SET definition = jsonb_set(definition,"
            " '{handlers}', '{}') WHERE name = 'jobs'")
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(failure) == 1 and isinstance(failure[0], DefinitionError)
    assert "not installed: note" in str(failure[0])


def test_a_dispatcher_takes_only_the_workflows_it_serves(
        settings: Settings, sql: Any) -> None:
    order = place_order(sql, "W-1")
    job = insert_job(sql)
    with Orchestrator(settings, Registry([jobs])) as orch:
        orch.dispatcher(until_idle=True).run()  # idle: nothing of *its* workflows is open
    assert status(sql, job) == "finished"
    assert sql("SELECT status FROM orders WHERE id = %s", (order,)) == [("placed",)]
    assert sql("SELECT status FROM orchestrator.events WHERE workflow = 'food_order'"
               " AND op = 'INSERT'") == [("pending",)]


def test_a_stale_outcome_rolls_back_the_handlers_own_writes(sql: Any, run_idle: Any) -> None:
    job = insert_job(sql)
    # The row moves on (an operator, another application) after its event was recorded: the
    # handler still runs on the event and writes through ctx.db, but its answer meets a row
    # that left the state it saw. Its write and its outcome must not land. (The fault tests
    # move rows while their handlers are running: tests/fault/test_fencing.py.)
    sql("UPDATE jobs SET status = 'working' WHERE id = %s", (job,))
    run_idle()
    assert sql("SELECT count(*) FROM executions WHERE job_id = %s AND column_name = 'status'"
               " AND attempt = 1", (job,)) == [(2,)]  # the stale handler did run, then `finish`
    exactly_once.assert_no_state_written_twice(sql)
    assert sql("SELECT count(*) FROM job_effects") == [(0,)]
    assert events(sql, job)[0][3:5] == ("done", "stale")
    assert status(sql, job) == "finished"  # the hand's own change ran on
    exactly_once.assert_job_effects_once(sql)


def test_a_watched_value_a_float_cannot_hold_does_not_make_its_event_stale(
        dsn: str, sql: Any) -> None:
    # An event holds the row as JSON: a numeric becomes a Python float, which cannot hold
    # these 20 digits. The write-back's compare-and-set must still find the row unchanged.
    from orchestrator import Event, Next, Workflow, schema

    sql("CREATE TABLE ledger (id bigint PRIMARY KEY, amount numeric, note text)")
    ledger = Workflow("ledger", table="public.ledger", column=None, watch=["amount"])

    @ledger.on_column("amount", from_=None)
    def book(event: Event) -> Next:
        return Next(values={"note": "booked"})

    with psycopg.connect(dsn) as conn:
        schema.install_workflows(conn, ledger)
    sql("INSERT INTO ledger VALUES (1, 123456789012345678.91)")
    settings = Settings.load(env={}, dsn=dsn, retry_base_s=0.05, lease_s=5.0)
    with Orchestrator(settings, Registry([ledger])) as orch:
        orch.dispatcher(until_idle=True).run()
    assert sql("SELECT note FROM ledger") == [("booked",)]
    assert sql("SELECT outcome FROM orchestrator.event_log") == [("applied",)]
