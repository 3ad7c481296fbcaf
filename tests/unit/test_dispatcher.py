"""The dispatcher loop on an in-memory store (tests/support/fake_store.py): claims, hand-overs,
retries, suspects, stopping, database loss, timeouts. The same behaviours run on a real server
in tests/integration and tests/fault; here each step can be held and the clock moved on."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from typing import Any

import pytest

from orchestrator import Context, Event, Limit, Next, Related, Workflow
from orchestrator.config import Settings
from orchestrator.dispatcher import DEFINITION_CHECK_S, Dispatcher, Stats
from orchestrator.errors import DefinitionError
from orchestrator.intake import Draining
from orchestrator.outcomes import EventStatus, Outcome
from orchestrator.registry import Registry
from tests.support.fake_store import Clock, FakeStore

DONE, DEAD, PENDING, RUNNING = (EventStatus.DONE, EventStatus.DEAD, EventStatus.PENDING,
                                EventStatus.RUNNING)
APPLIED, NO_HANDLER = Outcome.APPLIED, Outcome.NO_HANDLER
QUICK = {"poll_interval_s": 0.01, "retry_base_s": 0.01, "retry_max_s": 0.04, "lease_s": 30.0,
         "handler_timeout_s": 10_000.0, "shutdown_grace_s": 30.0, "concurrency": 4,
         "max_attempts": 3}
# With polls this far apart, chores run only when a test moves the clock on.
NO_POLL = {"poll_interval_s": 1000.0}


def jobs() -> Workflow:
    """new -> working -> finished, failure state failed; each test adds its handlers."""
    return Workflow("jobs", table="public.jobs", states=["new", "working", "finished", "failed"],
                    initial="new", terminal=["finished", "failed"], failure_state="failed",
                    transitions=[("start", "new", "working"), ("finish", "working", "finished")],
                    watch=["note"])


def gated_jobs(gate: threading.Event) -> Workflow:
    """jobs() whose rows start working once ``gate`` opens (each handler holds its slot)."""
    wf = jobs()

    @wf.on_enter("new")
    def start(event: Event) -> str:
        gate.wait(10)
        return "working"

    return wf


class Loop:
    """A dispatcher on a fake store, both on one test clock; a NOTIFY is a direct wake."""

    def __init__(self, wf: Workflow, **settings: Any) -> None:
        self.clock = Clock()
        self.store = FakeStore([wf], self.clock)
        self.registry = Registry([wf])
        self.settings = Settings(**QUICK | settings)
        self.failure: BaseException | None = None
        self.thread: threading.Thread | None = None

    def dispatcher(self, *, until_idle: bool) -> Dispatcher:
        dispatcher = Dispatcher(self.registry, self.store, self.settings, listen_dsn=None,
                                until_idle=until_idle, clock=self.clock)
        self.store.notify = dispatcher.wake
        return dispatcher

    def run_idle(self) -> Stats:
        return self.dispatcher(until_idle=True).run()

    def start(self) -> Dispatcher:
        dispatcher = self.dispatcher(until_idle=False)

        def run() -> None:
            try:
                dispatcher.run()
            except BaseException as exc:
                self.failure = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return dispatcher

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the dispatcher did not return"

    @contextmanager
    def running(self) -> Iterator[Dispatcher]:
        dispatcher = self.start()
        try:
            yield dispatcher
        finally:
            dispatcher.stop()
            self.join()
        if self.failure is not None:
            raise self.failure

    def running_now(self, *event_ids: int) -> bool:
        return all(self.store.status(i)[0] is RUNNING for i in event_ids)

    def outcome(self, event_id: int) -> Outcome | None:
        return self.store.status(event_id)[1]


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Handlers that wait on it hold their slot until the test opens it (always, at the end)."""
    event = threading.Event()
    yield event
    event.set()


def test_a_new_row_runs_to_its_end_each_next_event_handed_over() -> None:
    wf = jobs()

    @wf.on_enter("new")
    def start(event: Event) -> str:
        return "working"

    @wf.on("new", "working")
    def finish(event: Event) -> str:
        return "finished"

    loop = Loop(wf)
    loop.store.insert("jobs", "1")
    stats = loop.run_idle()
    assert loop.store.row("jobs", "1")["status"] == "finished"
    assert [(r.event.new_value, r.status, r.outcome) for r in loop.store.events.values()] == [
        ("new", DONE, APPLIED), ("working", DONE, APPLIED), ("finished", DONE, NO_HANDLER)]
    # The arrival in `finished`, which no handler serves, was recorded finished: no hand-over.
    assert (stats.claimed, stats.handed_off, stats.applied, stats.no_handler) == (1, 1, 2, 0)


def test_a_failing_handler_is_retried_with_backoff_then_succeeds() -> None:
    wf = jobs()

    @wf.on_enter("new")
    def start(event: Event) -> str:
        if event.attempt <= 2:
            raise RuntimeError(f"boom on attempt {event.attempt}")
        return "working"

    loop = Loop(wf, retry_base_s=0.02, retry_max_s=1.0)
    first = loop.store.insert("jobs", "1")
    stats = loop.run_idle()
    assert loop.store.status(first) == (DONE, APPLIED, 3)
    assert loop.store.errors == [(first, 1, "RuntimeError: boom on attempt 1"),
                                 (first, 2, "RuntimeError: boom on attempt 2")]
    # Full jitter over the upper half: attempt 1 waits 0.01-0.02 s, attempt 2 0.02-0.04 s.
    gaps = [b - a for a, b in pairwise(loop.store.events[first].claimed_at)]
    assert gaps[0] >= 0.01 and gaps[1] >= 0.02
    assert stats.retried == 2 and stats.applied == 1


def test_an_event_is_dead_after_its_last_attempt_and_its_row_failed() -> None:
    wf = jobs()

    @wf.on_enter("new")
    def start(event: Event) -> str:
        raise RuntimeError("boom")

    loop = Loop(wf)
    first = loop.store.insert("jobs", "1")
    stats = loop.run_idle()
    assert loop.store.status(first) == (DEAD, Outcome.DEAD, 3)
    assert loop.store.errors[-1] == (first, 3, "RuntimeError: boom (attempt 3 of 3)")
    assert loop.store.row("jobs", "1")["status"] == "failed"
    assert stats.dead == 1 and stats.retried == 2


def test_a_write_the_database_refuses_is_a_failed_attempt() -> None:
    wf = jobs()

    @wf.on_enter("new")
    def start(event: Event) -> Next:
        return Next("working", {"note": "far too long"})

    loop = Loop(wf)
    loop.store.refuse = lambda result: ("new row violates check constraint" if result.next
                                        and result.next.values else None)
    first = loop.store.insert("jobs", "1")
    stats = loop.run_idle()
    assert loop.store.status(first) == (DEAD, Outcome.DEAD, 3)
    assert [e[2] for e in loop.store.errors] == [
        "write-back failed: new row violates check constraint"] * 2 + [
        "write-back failed: new row violates check constraint (attempt 3 of 3)"]
    assert loop.store.row("jobs", "1") == {"id": "1", "status": "failed"}
    assert stats.retried == 2 and stats.dead == 1 and stats.lost == 0


def test_a_row_that_moved_on_meanwhile_makes_the_outcome_stale(gate: threading.Event) -> None:
    wf = gated_jobs(gate)
    loop = Loop(wf, **NO_POLL)
    first = loop.store.insert("jobs", "1")
    with loop.running() as dispatcher:
        loop.store.wait_until(lambda: loop.running_now(first), "the handler to run")
        loop.store.update("jobs", "1", status="failed")  # an operator moves the row on
        gate.set()
        loop.store.wait_until(lambda: loop.outcome(first) is not None, "the outcome")
    assert loop.store.status(first) == (DONE, Outcome.STALE, 1)
    assert loop.store.row("jobs", "1")["status"] == "failed"
    assert dispatcher.stats.stale == 1


def test_a_wake_claims_at_once_without_waiting_for_a_poll() -> None:
    wf = jobs()

    @wf.on_enter("new")
    def start(event: Event) -> str:
        return "working"

    loop = Loop(wf, **NO_POLL)
    with loop.running():
        first = loop.store.insert("jobs", "1")  # its NOTIFY wakes the loop
        loop.store.wait_until(lambda: loop.outcome(first) is APPLIED, "the event to run")


def test_a_due_deadline_timer_moves_the_row() -> None:
    loop = Loop(jobs())
    loop.store.insert("jobs", "1")
    timer = loop.store.add_timer("jobs", "1", "working")
    stats = loop.run_idle()
    assert loop.store.status(timer) == (DONE, APPLIED, 1)
    assert loop.store.row("jobs", "1")["status"] == "working"
    assert stats.applied == 1 and stats.no_handler == 2


def others_running(store: FakeStore, event: Event) -> list[int]:
    """The events running beside ``event`` now."""
    return [r.event.id for r in store.events.values()
            if r.status is RUNNING and r.event.id != event.id]


def test_a_suspect_event_runs_alone_once_the_work_in_hand_is_done(gate: threading.Event) -> None:
    wf = jobs()
    alongside: list[int] = []

    @wf.on_enter("new")
    def start(event: Event) -> str:
        if event.key == "suspect":
            alongside.extend(others_running(loop.store, event))
        else:
            gate.wait(10)
        return "working"

    @wf.on_enter("working")  # served, so that a's and b's writes hand an event over
    def settle(event: Event) -> None:
        return None

    loop = Loop(wf, **NO_POLL)
    a, b = loop.store.insert("jobs", "a"), loop.store.insert("jobs", "b")
    with loop.running() as dispatcher:
        loop.store.wait_until(lambda: loop.running_now(a, b), "a and b to run")
        suspect = loop.store.insert("jobs", "suspect", attempts=1, suspect=True)
        loop.clock.advance(1000)  # the next poll finds the suspect: no new work meanwhile
        dispatcher.wake()
        loop.store.wait_until(lambda: isinstance(dispatcher._intake.mode, Draining),
                              "the loop to drain")
        c = loop.store.insert("jobs", "c")
        gate.set()
        loop.store.wait_until(lambda: loop.outcome(c) is APPLIED, "c to run, after the suspect")
    history = loop.store.history
    assert alongside == []
    assert history.index(("claim", suspect)) > max(history.index(("finish", a)),
                                                   history.index(("finish", b)))
    assert history.index(("claim", c)) > history.index(("finish", suspect))
    # What a's and b's writes handed over while draining was given back, for anyone to take.
    released = [i for op, i in history if op == "release"]
    assert sorted(loop.store.events[i].event.key for i in released) == ["a", "b"]
    assert loop.store.status(suspect) == (DONE, APPLIED, 2)


class Running:
    """The handlers running now, and the most that ever ran at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now: set[str] = set()
        self.ran: list[str] = []
        self.most = 0

    @contextmanager
    def one(self, key: str) -> Iterator[None]:
        with self._lock:
            self.now.add(key)
            self.most = max(self.most, len(self.now))
        try:
            yield
        finally:
            with self._lock:
                self.now.discard(key)
                self.ran.append(key)


def test_a_slot_is_free_once_the_answer_is_back_while_its_write_back_waits() -> None:
    wf = jobs()
    a_may_answer, write_may_go = threading.Event(), threading.Event()
    running = Running()

    @wf.on_enter("new")
    def look(event: Event) -> None:  # the row stays where it is: nothing to hand over
        with running.one(event.key):
            if event.key == "a":
                a_may_answer.wait(10)

    loop = Loop(wf, concurrency=1, **NO_POLL)
    finish = loop.store.finish

    def held_finish(results: Any, **kwargs: Any) -> Any:
        if any(r.event.key == "a" for r in results):
            write_may_go.wait(10)
        return finish(results, **kwargs)

    loop.store.finish = held_finish  # type: ignore[method-assign]
    a = loop.store.insert("jobs", "a")
    try:
        with loop.running():
            loop.store.wait_until(lambda: running.now == {"a"}, "a to run")
            b = loop.store.insert("jobs", "b")  # no slot free: b waits, claimed or not
            a_may_answer.set()
            loop.store.wait_until(lambda: "b" in running.ran, "b to run")
            assert loop.outcome(a) is None  # b ran while a's write-back still waited
            write_may_go.set()
            loop.store.wait_until(lambda: loop.outcome(a) is loop.outcome(b) is Outcome.NOOP,
                                  "both written")
    finally:
        a_may_answer.set()
        write_may_go.set()
    assert running.most == 1


def test_a_write_that_moves_rows_comes_before_new_claims_so_their_next_steps_run_first() -> None:
    wf = jobs()
    a_may_answer = threading.Event()

    @wf.on_enter("new")
    def start(event: Event) -> str:
        if event.key == "a":
            a_may_answer.wait(10)
        return "working"

    @wf.on_enter("working")
    def settle(event: Event) -> None:
        return None

    loop = Loop(wf, concurrency=1, **NO_POLL)
    a = loop.store.insert("jobs", "a")
    with loop.running():
        loop.store.wait_until(lambda: loop.running_now(a), "a to run")
        b = loop.store.insert("jobs", "b")
        a_may_answer.set()
        loop.store.wait_until(lambda: all(r.status is DONE for r in loop.store.events.values())
                              and len(loop.store.events) == 4, "both rows to settle")
    a_next = next(r.event.id for r in loop.store.events.values()
                  if r.event.key == "a" and r.event.new_value == "working")
    # a's next step, handed over by a's write, ran before b was claimed.
    assert loop.store.history.index(("claim", a_next)) < loop.store.history.index(("claim", b))


def test_an_event_handed_over_while_claims_fill_the_slots_waits_for_one(
        gate: threading.Event) -> None:
    wf = jobs()
    a_may_answer = threading.Event()
    running = Running()

    @wf.on_enter("new")
    def look(event: Event) -> None:  # the row stays: its slot is not kept for a hand-over
        with running.one(event.key):
            (a_may_answer if event.key == "a" else gate).wait(10)

    loop = Loop(wf, concurrency=1, **NO_POLL)
    a = loop.store.insert("jobs", "a")
    with loop.running() as dispatcher:
        loop.store.wait_until(lambda: running.now == {"a"}, "a to run")
        loop.store.update("jobs", "a", note="changed")  # a's next event, held behind a
        b = loop.store.insert("jobs", "b")
        a_may_answer.set()  # a's slot goes to b; a's write then hands a's next event over
        loop.store.wait_until(lambda: loop.outcome(a) is Outcome.NOOP and running.now == {"b"},
                              "a written while b runs")
        loop.store.wait_until(lambda: len(dispatcher._hand.ready) == 1,
                              "a's next event to wait for a slot")
        assert running.now == {"b"}
        gate.set()
        loop.store.wait_until(lambda: loop.outcome(b) is Outcome.NOOP and all(
            r.status is DONE for r in loop.store.events.values()), "everything to run")
    assert running.most == 1
    assert not [i for op, i in loop.store.history if op == "release"]


def test_a_stop_finishes_the_work_in_hand_and_releases_the_rest_uncounted(
        gate: threading.Event) -> None:
    wf = jobs()
    b_may_finish = threading.Event()

    @wf.on_enter("new")
    def start(event: Event) -> str:
        (gate if event.key == "a" else b_may_finish).wait(10)
        return "working"

    @wf.on_enter("working")  # served, so that a's write hands an event over
    def settle(event: Event) -> None:
        return None

    loop = Loop(wf, **NO_POLL)
    a, b = loop.store.insert("jobs", "a"), loop.store.insert("jobs", "b")
    dispatcher = loop.start()
    try:
        loop.store.wait_until(lambda: loop.running_now(a, b), "a and b to run")
        dispatcher.stop()
        gate.set()  # a finishes within the grace period
        loop.store.wait_until(lambda: loop.outcome(a) is APPLIED, "a's result to be written")
        loop.clock.advance(QUICK["shutdown_grace_s"] + 1)  # b outlives it
        dispatcher.wake()
        loop.join()
    finally:
        b_may_finish.set()
    assert loop.failure is None
    handed_over = next(r.event.id for r in loop.store.events.values()
                       if r.event.key == "a" and r.event.new_value == "working")
    assert loop.store.status(b) == (PENDING, None, 0)
    assert loop.store.status(handed_over) == (PENDING, None, 0)
    assert ("release", b) in loop.store.history


def test_results_wait_out_a_database_outage_and_are_written_after(gate: threading.Event) -> None:
    wf = gated_jobs(gate)
    loop = Loop(wf, **NO_POLL)
    first = loop.store.insert("jobs", "1")
    with loop.running() as dispatcher:
        loop.store.wait_until(lambda: loop.running_now(first), "the handler to run")
        loop.store.down = True
        gate.set()
        loop.store.wait_until(lambda: loop.store.failed_calls > 0, "the write to fail")
        assert loop.running_now(first)
        loop.store.down = False
        loop.clock.advance(10)  # past the backoff
        dispatcher.wake()
        loop.store.wait_until(lambda: loop.outcome(first) is APPLIED, "the kept result")
    assert loop.store.history.count(("finish", first)) == 1
    assert loop.store.status(first) == (DONE, APPLIED, 1)
    assert dispatcher.stats.applied == 1


def test_a_claim_whose_answer_was_lost_is_released_and_run_after_the_outage() -> None:
    wf = jobs()
    attempts: list[int] = []

    @wf.on_enter("new")
    def start(event: Event) -> str:
        attempts.append(event.attempt)
        return "working"

    loop = Loop(wf, **NO_POLL)
    loop.store.lose_next_answer = True
    first = loop.store.insert("jobs", "1")
    with loop.running():
        loop.store.wait_until(lambda: loop.outcome(first) is APPLIED, "the event to run")
    assert ("release", first) in loop.store.history
    assert attempts == [1]  # the lost claim was given back uncounted, and ran once


def jobs_with_an_owner() -> Workflow:
    """new -> working, each event with its row's owner as related data."""
    return Workflow("jobs", table="public.jobs", states=["new", "working"], initial="new",
                    terminal=["working"], transitions=[("start", "new", "working")],
                    related={"owner": Related.parent("owners", "owner_id")})


def test_claims_whose_related_data_could_not_be_read_are_released_and_run_after_the_outage(
        ) -> None:
    wf = jobs_with_an_owner()
    attempts: list[int] = []

    @wf.on_enter("new")
    def start(event: Event) -> str:
        attempts.append(event.attempt)
        return "working"

    loop = Loop(wf, **NO_POLL)
    loop.store.lose_related = True
    first = loop.store.insert("jobs", "1")
    with loop.running() as dispatcher:
        loop.store.wait_until(lambda: ("release", first) in loop.store.history,
                              "the claim to be given back after the outage")
        dispatcher.wake()
        loop.store.wait_until(lambda: loop.outcome(first) is APPLIED, "the event to run")
    assert attempts == [1]  # never started before the outage; given back uncounted


def test_a_suspect_claimed_as_the_server_went_away_runs_alone_after_the_outage() -> None:
    """The suspect's claim is given back with the others'; the loop must not wait for it
    to finish alone for ever, claiming nothing meanwhile."""
    wf = jobs_with_an_owner()
    alongside: list[int] = []

    @wf.on_enter("new")
    def start(event: Event) -> str:
        if event.key == "suspect":
            alongside.extend(others_running(loop.store, event))
        return "working"

    loop = Loop(wf, **NO_POLL)
    loop.store.lose_related = True
    suspect = loop.store.insert("jobs", "suspect", attempts=1, suspect=True)
    with loop.running() as dispatcher:
        loop.clock.advance(1000)  # the next poll looks for suspects
        dispatcher.wake()
        loop.store.wait_until(lambda: ("release", suspect) in loop.store.history,
                              "the suspect's claim to be given back after the outage")
        later = loop.store.insert("jobs", "later")
        loop.clock.advance(1000)
        dispatcher.wake()
        loop.store.wait_until(lambda: loop.outcome(suspect) is APPLIED
                              and loop.outcome(later) is APPLIED, "both to run")
    assert alongside == []


def test_handed_over_events_that_could_not_win_their_limits_turn_run_after_the_outage(
        ) -> None:
    # The first handler writes through ctx.db, so its result is written in its own
    # transaction, which hands the row's next event over; that event's turn of its limit is
    # then taken as the server goes away.
    wf = jobs()
    runs: list[tuple[str, int]] = []

    @wf.on_enter("new", limit=Limit(max_running=1))
    def start(event: Event, ctx: Context) -> str:
        ctx.db.append("effect")
        runs.append(("start", event.attempt))
        return "working"

    @wf.on("new", "working", limit=Limit(max_running=1))
    def finish(event: Event) -> str:
        runs.append(("finish", event.attempt))
        return "finished"

    loop = Loop(wf, **NO_POLL)
    loop.store.lose_admit = 2
    first = loop.store.insert("jobs", "1")
    with loop.running() as dispatcher:
        loop.store.wait_until(lambda: loop.store.row("jobs", "1")["status"] == "finished",
                              "the row to finish after the outage")
    assert loop.outcome(first) is APPLIED
    assert runs == [("start", 1), ("finish", 1)]  # the handed-over event started once
    assert dispatcher.stats.lost == 0


def test_a_result_lost_with_the_handlers_transaction_runs_again_after_the_outage() -> None:
    wf = jobs()
    attempts: list[int] = []

    @wf.on_enter("new")
    def start(event: Event, ctx: Context) -> str:
        ctx.db.append("INSERT INTO effects ...")
        attempts.append(event.attempt)
        if len(attempts) == 1:
            loop.store.down = True  # gone before the handler's transaction writes its result
        return "working"

    loop = Loop(wf, **NO_POLL)
    first = loop.store.insert("jobs", "1")
    with loop.running():
        loop.store.wait_until(lambda: loop.store.failed_calls > 0, "the write to fail")
        loop.store.down = False
        loop.store.wait_until(lambda: loop.outcome(first) is APPLIED, "the event to run again")
    assert attempts == [1, 1]  # released uncounted after the outage, then run again
    assert ("release", first) in loop.store.history


def test_a_hung_handler_is_abandoned_at_its_timeout_and_its_worker_replaced(
        gate: threading.Event) -> None:
    wf = jobs()
    hanging = threading.Event()

    @wf.on_enter("new", timeout_s=5)
    def start(event: Event, ctx: Context) -> str:
        ctx.db.append("SELECT 1")  # a session of its own, to be ended at the timeout
        if event.key == "hangs":
            hanging.set()
            gate.wait(10)
        return "working"

    loop = Loop(wf, concurrency=1, max_attempts=1, **NO_POLL)
    hung = loop.store.insert("jobs", "hangs")
    with loop.running() as dispatcher:
        loop.store.wait_until(hanging.is_set, "the handler to hang")
        loop.clock.advance(6)
        dispatcher.wake()
        loop.store.wait_until(lambda: loop.outcome(hung) is Outcome.DEAD, "the timeout")
        other = loop.store.insert("jobs", "other")  # runs on the worker that replaced it
        loop.store.wait_until(lambda: loop.outcome(other) is APPLIED, "the other event")
    assert loop.store.errors == [(hung, 1, "handler timed out after 5s (attempt 1 of 1)")]
    assert len(loop.store.terminated) == 1
    assert loop.store.row("jobs", "hangs")["status"] == "failed"
    assert dispatcher.stats.timed_out == 1


def test_a_claim_lost_meanwhile_is_counted_and_its_outcome_discarded(
        gate: threading.Event) -> None:
    wf = gated_jobs(gate)
    loop = Loop(wf, **NO_POLL)
    first = loop.store.insert("jobs", "1")
    with loop.running() as dispatcher:
        loop.store.wait_until(lambda: loop.running_now(first), "the handler to run")
        loop.store.take_over(first)
        gate.set()
        loop.store.wait_until(lambda: dispatcher.stats.lost == 1, "the write to find it gone")
    assert loop.store.status(first) == (RUNNING, None, 2)
    assert loop.store.row("jobs", "1")["status"] == "new"


def test_the_heartbeat_renews_the_leases_of_the_events_in_hand(gate: threading.Event) -> None:
    wf = gated_jobs(gate)
    loop = Loop(wf, **NO_POLL)
    first = loop.store.insert("jobs", "1")
    with loop.running() as dispatcher:
        loop.store.wait_until(lambda: loop.running_now(first), "the handler to run")
        loop.clock.advance(QUICK["lease_s"] / 3)
        dispatcher.wake()
        loop.store.wait_until(lambda: [first] in loop.store.leases, "a heartbeat")
        gate.set()


def test_a_changed_definition_stops_the_dispatcher() -> None:
    loop = Loop(jobs(), **NO_POLL)
    dispatcher = loop.start()
    loop.store.wait_until(lambda: loop.store.in_use == ["jobs"], "the dispatcher to start")
    loop.store.definition_changed = True  # `migrate` installed other handlers meanwhile
    loop.clock.advance(DEFINITION_CHECK_S)
    dispatcher.wake()
    loop.join()
    assert isinstance(loop.failure, DefinitionError)
