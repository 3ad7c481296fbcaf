"""One attempt at an event, on the runner alone: what it comes to, and what it reports to the
loop (Ran, Finished, Lost), against the in-memory store of tests/support/fake_store.py."""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from orchestrator import Context, Event, Next, Retry, Workflow
from orchestrator.config import Settings
from orchestrator.errors import DatabaseUnavailable
from orchestrator.outcomes import Outcome, Result
from orchestrator.registry import Registry
from orchestrator.runner import DEADLINE_HANDLER, Finished, Job, Lost, Ran, Report, Runner
from tests.support.fake_store import Clock, FakeStore, FakeTransaction

SETTINGS = Settings(retry_base_s=1.0, retry_max_s=60.0, max_attempts=3, handler_timeout_s=30.0,
                    concurrency=2)


def jobs() -> Workflow:
    return Workflow("jobs", table="public.jobs", states=["new", "working", "finished", "failed"],
                    initial="new", terminal=["finished", "failed"], failure_state="failed",
                    transitions=[("start", "new", "working"), ("finish", "working", "finished")],
                    watch=["note"])


class Attempts:
    """A runner on a fake store; what it reports lands in ``reports``."""

    def __init__(self, wf: Workflow) -> None:
        self.clock = Clock()
        self.store = FakeStore([wf], self.clock)
        self.reports: queue.SimpleQueue[Report] = queue.SimpleQueue()
        self.runner = Runner(Registry([wf]), self.store, SETTINGS, self.reports.put,
                             clock=self.clock)

    def event(self, key: str = "1", **row: Any) -> Event:
        """A claimed event: the INSERT of a new row."""
        self.store.insert("jobs", key, **row)
        (event,) = self.store.claim(1)
        return event

    def run(self, event: Event) -> Report:
        """Start ``event`` and wait for its report."""
        job = self.runner.start(event, self.clock())
        assert isinstance(job, Job), job
        return self.reports.get(timeout=10)

    def result(self, event: Event) -> Result:
        report = self.run(event)
        assert isinstance(report, Ran), report
        return report.result


@pytest.fixture
def attempts() -> Iterator[Callable[[Workflow], Attempts]]:
    made: list[Attempts] = []

    def make(wf: Workflow) -> Attempts:
        made.append(Attempts(wf))
        return made[-1]

    yield make
    for a in made:
        a.runner.stop()


def with_handler(fn: Callable[..., Any], **options: Any) -> Workflow:
    wf = jobs()
    wf.on_enter("new", **options)(fn)
    return wf


def test_an_event_without_a_handler_is_done_at_once(attempts: Any) -> None:
    a = attempts(jobs())
    event = a.event()
    assert a.runner.start(event, a.clock()) == Result(event, Outcome.NO_HANDLER)


def test_a_due_deadline_moves_the_row_without_a_handler(attempts: Any) -> None:
    a = attempts(jobs())
    a.store.finish([Result(a.event(), Outcome.NO_HANDLER)])
    a.store.add_timer("jobs", "1", "working")
    (timer,) = a.store.claim_timers(1)
    assert a.runner.start(timer, a.clock()) == Result(
        timer, Outcome.APPLIED, handler=DEADLINE_HANDLER, next=Next("working"))


def test_attempts_used_up_elsewhere_make_the_event_dead_without_running(attempts: Any) -> None:
    ran: list[Event] = []
    a = attempts(with_handler(ran.append))
    a.store.insert("jobs", "1", attempts=3, suspect=True)
    (event,) = a.store.claim(1, suspect=True)
    result = a.runner.start(event, a.clock())
    assert isinstance(result, Result) and result.outcome is Outcome.DEAD
    assert result.error == ("gave up: an earlier attempt never finished (its dispatcher "
                            "stopped) (attempt 4 of 3)")
    assert result.next == Next("failed") and ran == []


def test_a_returned_state_is_applied_and_none_is_a_noop(attempts: Any) -> None:
    def start(event: Event) -> str | None:
        return None if event.key == "nothing" else "working"

    a = attempts(with_handler(start))
    applied = a.result(a.event("1"))
    assert (applied.outcome, applied.next) == (Outcome.APPLIED, Next("working"))
    assert applied.handler is not None and applied.handler.endswith("start")
    noop = a.result(a.event("nothing"))
    assert (noop.outcome, noop.next, noop.handler) == (Outcome.NOOP, None, applied.handler)


@pytest.mark.parametrize("returned,error", [
    ("finished", "IllegalTransition: workflow 'jobs' does not allow 'new' -> 'finished'"),
    (Next("working", {"no_such_column": 1}), "BadOutcome: handler returned values for unknown "
                                             "columns ['no_such_column'] of public.jobs"),
    (42, "BadOutcome: handler returned int 42"),
])
def test_an_illegal_or_malformed_outcome_is_dead_at_once(
        attempts: Any, returned: Any, error: str) -> None:
    a = attempts(with_handler(lambda event: returned))
    result = a.result(a.event())
    assert result.outcome is Outcome.DEAD and result.next == Next("failed")
    assert result.error is not None and result.error.startswith(error)
    assert result.error.endswith("(attempt 1 of 3)")


def test_retry_raised_by_the_handler_keeps_its_delay(attempts: Any) -> None:
    def start(event: Event) -> None:
        raise Retry(delay_s=0.5, reason="not yet")

    a = attempts(with_handler(start))
    result = a.result(a.event())
    assert (result.outcome, result.delay_s, result.error) == (Outcome.RETRY, 0.5, "Retry: not yet")


@pytest.mark.parametrize("delay_s", [float("nan"), float("inf"), -1.0])
def test_a_retry_delay_that_is_not_a_time_is_the_backoffs(attempts: Any, delay_s: float) -> None:
    def start(event: Event) -> None:
        raise Retry(delay_s=delay_s)

    a = attempts(with_handler(start))
    result = a.result(a.event())
    assert result.outcome is Outcome.RETRY
    assert 0.5 <= result.delay_s <= SETTINGS.retry_base_s  # backoff: the upper half of base_s


def test_a_failure_backs_off_until_the_last_attempt_then_is_dead(attempts: Any) -> None:
    a = attempts(jobs())
    event = a.event()
    spec = None
    for attempt, (low, high) in enumerate([(0.5, 1.0), (1.0, 2.0)], start=1):
        result = a.runner.failure(_at(event, attempt), spec, "boom")
        assert result.outcome is Outcome.RETRY and low <= result.delay_s <= high
    last = a.runner.failure(_at(event, 3), spec, "boom")
    assert (last.outcome, last.next, last.error) == (Outcome.DEAD, Next("failed"),
                                                     "boom (attempt 3 of 3)")
    done_row = _at(event, 3, new_row={"id": "1", "status": "finished"})
    assert a.runner.failure(done_row, spec, "boom").next is None  # a terminal row stays


def _at(event: Event, attempt: int, **changes: Any) -> Event:
    return replace(event, attempt=attempt, **changes)


def test_a_handler_calling_sys_exit_fails_its_attempt(attempts: Any) -> None:
    a = attempts(with_handler(lambda event: sys.exit(3)))
    result = a.result(a.event())
    assert (result.outcome, result.error) == (Outcome.RETRY, "SystemExit: 3")


def test_a_handler_that_used_its_transaction_finishes_in_it(attempts: Any) -> None:
    def start(event: Event, ctx: Context) -> str:
        ctx.db.append("INSERT INTO effects ...")
        return "working"

    a = attempts(with_handler(start))
    event = a.event()
    report = a.run(event)
    assert isinstance(report, Finished)
    assert report.report.outcomes == {event.id: Outcome.APPLIED}
    assert isinstance(report.job.tx, FakeTransaction) and report.job.tx.closed.is_set()


def test_a_result_the_handlers_transaction_cannot_write_is_lost(attempts: Any) -> None:
    def start(event: Event, ctx: Context) -> str:
        ctx.db.append("INSERT INTO effects ...")
        a.store.down = True
        return "working"

    a = attempts(with_handler(start))
    report = a.run(a.event())
    assert isinstance(report, Lost) and isinstance(report.error, DatabaseUnavailable)


def test_a_handler_past_its_deadline_is_abandoned_and_its_late_result_dropped(
        attempts: Any) -> None:
    hanging, release = threading.Event(), threading.Event()

    def start(event: Event, ctx: Context) -> str:
        ctx.db.append("SELECT 1")
        hanging.set()
        release.wait(10)
        return "working"

    a = attempts(with_handler(start, timeout_s=5))
    job = a.runner.start(a.event(), a.clock())
    assert isinstance(job, Job) and job.deadline == pytest.approx(a.clock() + 5, abs=1)
    assert hanging.wait(10)
    result = a.runner.expire(job)
    assert result is not None and result.error == "handler timed out after 5s"
    assert a.runner.expire(job) is None  # once
    assert len(a.store.terminated) == 1
    release.set()
    assert isinstance(job.tx, FakeTransaction) and job.tx.closed.wait(10)
    assert a.reports.empty()


def test_a_handler_sees_the_time_it_has_left(attempts: Any) -> None:
    left: list[float] = []

    def start(event: Event, ctx: Context) -> None:
        left.append(ctx.remaining_s)
        a.clock.advance(4)
        left.append(ctx.remaining_s)

    a = attempts(with_handler(start, timeout_s=5))
    a.result(a.event())
    assert left[0] == pytest.approx(5, abs=1) and left[1] == pytest.approx(1, abs=1)


# -- async def handlers: on the async loop, no worker thread each ------------------------------

def test_an_async_handler_runs_on_the_loop_and_its_outcome_is_applied(attempts: Any) -> None:
    ran_on: list[str] = []

    async def start(event: Event, ctx: Context) -> str:
        await asyncio.sleep(0.01)
        ran_on.append(threading.current_thread().name)
        assert ctx.table == ("public", "jobs") and ctx.max_attempts == 3
        assert ctx.log.name == f"orchestrator.handler.{event.workflow}"
        return "working"

    a = attempts(with_handler(start))
    result = a.result(a.event())
    assert (result.outcome, result.next) == (Outcome.APPLIED, Next("working"))
    assert ran_on == ["orchestrator-async"]


@pytest.mark.parametrize("raised,outcome,error", [
    (Retry(delay_s=0.5, reason="not yet"), Outcome.RETRY, "Retry: not yet"),
    (ValueError("boom"), Outcome.RETRY, "ValueError: boom"),
    (SystemExit(3), Outcome.RETRY, "SystemExit: 3"),
])
def test_an_async_handler_that_raises_fails_its_attempt_like_a_sync_one(
        attempts: Any, raised: BaseException, outcome: Outcome, error: str) -> None:
    async def start(event: Event) -> None:
        raise raised

    a = attempts(with_handler(start))
    result = a.result(a.event())
    assert (result.outcome, result.error) == (outcome, error)


def test_an_async_handler_returning_an_illegal_state_is_dead_at_once(attempts: Any) -> None:
    async def start(event: Event) -> str:
        return "finished"

    a = attempts(with_handler(start))
    result = a.result(a.event())
    assert result.outcome is Outcome.DEAD and result.next == Next("failed")


def test_an_async_handler_may_not_use_the_blocking_connection(attempts: Any) -> None:
    async def start(event: Event, ctx: Context) -> None:
        ctx.db.append("SELECT 1")

    a = attempts(with_handler(start))
    result = a.result(a.event())
    assert result.outcome is Outcome.RETRY
    assert result.error is not None and result.error.startswith("SyncOnly: ctx.db is a blocking")


def test_an_async_handler_past_its_deadline_is_cancelled(attempts: Any) -> None:
    began, cancelled = threading.Event(), threading.Event()

    async def start(event: Event) -> str:
        began.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "working"

    a = attempts(with_handler(start, timeout_s=5))
    job = a.runner.start(a.event(), a.clock())
    assert isinstance(job, Job) and began.wait(10)
    result = a.runner.expire(job)
    assert result is not None and result.error == "handler timed out after 5s"
    assert cancelled.wait(10)
    assert a.store.terminated == [] and a.reports.empty()


def test_async_handlers_hold_no_worker_thread_and_run_side_by_side(attempts: Any) -> None:
    """Concurrency 2 in the settings, yet 20 async handlers wait at once, and no worker thread
    starts: threads start as sync handlers need them."""
    waiting, go = 0, threading.Event()

    async def start(event: Event) -> str:
        nonlocal waiting
        waiting += 1
        while not go.is_set():
            await asyncio.sleep(0.005)
        return "working"

    a = attempts(with_handler(start))
    for n in range(20):
        a.runner.start(a.event(str(n)), a.clock())
    deadline = time.monotonic() + 10
    while waiting < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert waiting == 20
    assert a.runner.worker_threads == 0
    go.set()
    assert {a.reports.get(timeout=10).result.outcome for _ in range(20)} == {Outcome.APPLIED}


def test_worker_threads_start_as_sync_handlers_need_them(attempts: Any) -> None:
    a = attempts(with_handler(lambda event: "working"))
    assert a.runner.worker_threads == 0
    a.result(a.event())
    assert a.runner.worker_threads == 1  # one job: one thread, not the concurrency's 2
