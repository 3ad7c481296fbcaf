"""An in-memory stand-in for the store's verbs (orchestrator.verbs.EventQueue), for unit tests of
the dispatcher and the runner. One dispatcher, one process: no SQL, no leases running out.

It imitates only what the loop relies on, and each of those has a test on a real server:
- claim: oldest due event first, one event of a row at a time, the attempt counted
  (integration/test_engine.py: test_claims_keep_one_event_per_row_at_a_time,
  test_events_written_while_no_dispatcher_ran_are_handled_on_start);
- events whose dispatcher died are claimed apart, and has_suspects finds them
  (test_engine.py: test_a_finish_after_losing_the_lease_is_discarded;
  fault/test_faults.py: test_a_handler_that_kills_its_process_ends_dead_and_blocks_no_other_row);
- claim_timers: deadline timers come due (integration/test_deadlines.py);
- finish: Next written with compare-and-set, else stale; retry after delay_s; dead, the row
  moved to the failure state; the error of a failed attempt recorded; no outcome for an event
  no longer ours; the row's next event handed over (test_engine.py:
  test_row_inserted_by_psql_runs_to_a_terminal_state, test_a_stale_event_changes_nothing,
  test_a_failing_handler_is_retried_then_succeeds, test_backoff_spaces_the_attempts,
  test_exhausted_attempts_make_the_event_dead_and_the_row_failed,
  test_a_finish_after_losing_the_lease_is_discarded);
- a write the database refuses comes back in ``rejected`` (test_engine.py:
  test_a_write_back_the_database_refuses_is_a_failed_attempt);
- release gives events back without counting the attempt (test_engine.py:
  test_released_events_are_pending_again_with_the_attempt_not_counted);
- has_open_events (every run_idle test); verify_workflows raises DefinitionError once the
  installed definition changed (test_engine.py:
  test_a_running_dispatcher_stops_when_another_definition_is_installed);
- archive and prune keep everything and report nothing moved or removed: the events of a
  unit test's run never reach their age (integration/test_retention.py);
- extend_leases and terminate_backend are only recorded (fault/test_faults.py:
  test_a_heartbeat_keeps_a_long_handler_from_being_taken_over; test_engine.py:
  test_a_handler_past_its_timeout_fails_and_is_retried);
- every verb raises DatabaseUnavailable while ``down``, and a claim can commit with its answer
  lost (fault/test_faults.py: test_the_database_restarting_mid_run_loses_nothing).
A row change records an event for the state column and each watched column, as the capture
trigger does, an arrival no handler serves already finished (test_engine.py:
test_trigger_records_insert_and_real_changes_only; test_triggers.py:
test_an_arrival_no_handler_serves_is_recorded_finished_and_wakes_nobody). A handler's
own transaction is a list of what it executed; the fake writes a result the same with or
without it.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.errors import DatabaseUnavailable, DefinitionError, RelatedDataError
from orchestrator.events import Event
from orchestrator.outcomes import EventStatus, FinishReport, Outcome, Pruned, Result
from orchestrator.workflow import Workflow

PENDING, RUNNING = EventStatus.PENDING, EventStatus.RUNNING


class Clock:
    """Monotonic seconds that a test can move forward: real time plus what it skipped."""

    def __init__(self) -> None:
        self._skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self._skipped

    def advance(self, seconds: float) -> None:
        self._skipped += seconds


@dataclass
class Record:
    """One row of the events table."""

    event: Event
    status: EventStatus = PENDING
    attempts: int = 0
    outcome: Outcome | None = None
    suspect: bool = False
    run_after: float = 0.0
    claimed_at: list[float] = field(default_factory=list)

    def blocks(self) -> bool:
        """Whether it holds up its row's later events (a timer only once it runs)."""
        return self.status is RUNNING or (self.status is PENDING and self.event.op != "TIMER")


class FakeTransaction:
    """A handler's transaction: ``connection`` is a list of what the handler executed."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.executed: list[Any] | None = None
        self.closed = threading.Event()

    @property
    def pid(self) -> int | None:
        return self._pid if self.executed is not None else None

    @property
    def started(self) -> bool:
        return self.executed is not None

    @property
    def connection(self) -> list[Any]:
        if self.executed is None:
            self.executed = []
        return self.executed

    def close(self, *, commit: bool = False) -> None:
        self.executed = None
        self.closed.set()


class FakeStore:
    """The events and rows of ``workflows`` in memory. Thread-safe: the runner writes from
    worker threads. ``wait_until`` blocks until a condition on it holds."""

    def __init__(self, workflows: Iterable[Workflow], clock: Callable[[], float]) -> None:
        self.workflows = {wf.name: wf for wf in workflows}
        self.clock = clock
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: dict[int, Record] = {}
        self.errors: list[tuple[int, int, str]] = []  # event id, attempt, error
        self.history: list[tuple[str, int]] = []  # ("claim" | "finish" | "release", event id)
        self.leases: list[list[int]] = []
        self.terminated: list[int] = []
        self.down = False
        self.failed_calls = 0
        self.lose_next_answer = False  # the next claim commits, but its answer never arrives
        self.lose_related = False  # the next read of related data meets the server gone
        self.lose_admit = 0  # the admit call of this number (1: the first) meets the server gone
        self.admits = 0
        self.in_use: list[str] = []  # the workflows a dispatcher started with
        self.definition_changed = False
        self.refuse: Callable[[Result], str | None] = lambda result: None
        self.notify: Callable[[], None] = lambda: None
        self._ids = itertools.count(1)
        self._changed = threading.Condition(threading.RLock())

    # -- what a test does: change rows, look, wait -------------------------------------------

    def insert(self, workflow: str, key: str, *, attempts: int = 0, suspect: bool = False,
               **values: Any) -> int:
        """A new row in the initial state; the id of its INSERT event (already tried
        ``attempts`` times, ``suspect`` when its dispatcher died)."""
        wf = self.workflows[workflow]
        row = {wf.key: key, wf.column: wf.initial} | values
        with self._changed:
            self.rows[(workflow, key)] = row
            record = self._record(wf, key, "INSERT", wf.column, None, wf.initial, {}, row)
            record.attempts, record.suspect = attempts, suspect
        self.notify()
        return record.event.id

    def update(self, workflow: str, key: str, **values: Any) -> None:
        """Change a row as another application would."""
        with self._changed:
            self._change(self.workflows[workflow], key, values)
        self.notify()

    def add_timer(self, workflow: str, key: str, to: str, *, due_in_s: float = 0.0) -> int:
        """A deadline timer: the row moves to ``to`` after ``due_in_s`` if still in its state."""
        wf = self.workflows[workflow]
        with self._changed:
            row = self.rows[(workflow, key)]
            record = self._record(wf, key, "TIMER", wf.column, row[wf.column], to, {}, row)
            record.run_after = self.clock() + due_in_s
        return record.event.id

    def take_over(self, event_id: int) -> None:
        """Another dispatcher claims the event anew (its lease ran out here meanwhile)."""
        with self._changed:
            self.events[event_id].attempts += 1

    def row(self, workflow: str, key: str) -> dict[str, Any]:
        with self._changed:
            return dict(self.rows[(workflow, key)])

    def status(self, event_id: int) -> tuple[EventStatus, Outcome | None, int]:
        """An event's status, outcome and attempts."""
        with self._changed:
            record = self.events[event_id]
            return record.status, record.outcome, record.attempts

    def wait_until(self, condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
        """Block until ``condition()`` holds: looked at whenever the store changes, and every
        few milliseconds for conditions on the loop's own state."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not condition():
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"timed out waiting for {what}"
                self._changed.wait(min(remaining, 0.01))

    # -- the verbs ---------------------------------------------------------------------------

    def use_workflows(self, workflows: Sequence[Workflow]) -> None:
        self.verify_workflows(workflows)
        with self._changed:
            self.in_use = [wf.name for wf in workflows]

    def verify_workflows(self, workflows: Sequence[Workflow]) -> None:
        self._answer()
        if self.definition_changed:
            raise DefinitionError("workflow 'jobs': this dispatcher's handlers differ")

    def columns(self, workflow: str) -> frozenset[str]:
        wf = self.workflows[workflow]
        return frozenset((wf.key, wf.column, *wf.watch))

    def claim(self, limit: int, *, suspect: bool = False) -> list[Event]:
        with self._changed:
            self._answer()
            due = [r for r in self._runnable() if r.event.op != "TIMER" and r.suspect == suspect]
            claimed = [self._take(r) for r in due[:limit]]
            if self.lose_next_answer:
                self.lose_next_answer = False
                raise DatabaseUnavailable("database error: the connection was lost")
            return claimed

    def claim_timers(self, limit: int) -> list[Event]:
        with self._changed:
            self._answer()
            due = sorted((r for r in self._runnable() if r.event.op == "TIMER"),
                         key=lambda r: r.run_after)
            return [self._take(r) for r in due[:limit]]

    def with_related(self, events: Sequence[Event]
                     ) -> tuple[list[Event], list[tuple[Event, RelatedDataError]]]:
        """Events as they are: related data is read on a real server only
        (integration/test_rich_events.py)."""
        with self._changed:
            self._answer()
            if self.lose_related:
                self.lose_related = False
                raise DatabaseUnavailable("database error: server closed the connection")
            return list(events), []

    def has_suspects(self) -> bool:
        with self._changed:
            self._answer()
            now = self.clock()
            return any(r.suspect and r.status is PENDING and r.run_after <= now
                       for r in self.events.values())

    def finish(self, results: Sequence[Result], *, conn: Any = None,
               quiet: bool = True) -> FinishReport:
        with self._changed:
            self._answer()
            report = FinishReport()
            finished: list[tuple[str, str]] = []
            for result in results:
                if (error := self.refuse(result)) is not None:
                    report.rejected.append((result, error))
                    continue
                record = self.events[result.event.id]
                if record.status is not RUNNING or record.attempts != result.event.attempt:
                    continue  # no longer ours
                report.outcomes[record.event.id] = self._write(record, result)
                if result.outcome is not Outcome.RETRY:
                    finished.append((record.event.workflow, record.event.key))
            report.handoffs = [self._take(r) for r in self._next_of_rows(finished)]
            self._changed.notify_all()
            return report

    def extend_leases(self, ids: Sequence[int]) -> None:
        with self._changed:
            self._answer()
            self.leases.append(list(ids))
            self._changed.notify_all()

    def requeue_expired(self) -> list[int]:
        self._answer()
        return []  # one dispatcher, always alive: no lease runs out here

    def release(self, ids: Sequence[int] = (), *, all_but: Sequence[int] | None = None) -> int:
        with self._changed:
            self._answer()
            chosen = [r for r in self.events.values() if r.status is RUNNING and (
                r.event.id not in all_but if all_but is not None else r.event.id in ids)]
            for record in chosen:
                record.status, record.attempts = PENDING, record.attempts - 1
                self.history.append(("release", record.event.id))
            self._changed.notify_all()
            return len(chosen)

    def admit(self, wanted: Any, *, wait_s: float) -> set[int]:
        """Every event wins its turn (the limits themselves are tested on a real server,
        integration/test_limits.py); the call numbered ``lose_admit`` meets the server gone."""
        with self._changed:
            self._answer()
            self.admits += 1
            if self.admits == self.lose_admit:
                raise DatabaseUnavailable("database error: server closed the connection")
            return {i for ids in wanted.values() for i in ids}

    def has_open_events(self) -> bool:
        with self._changed:
            self._answer()
            return any(r.status in (PENDING, RUNNING) for r in self.events.values())

    def archive(self, *, after_s: float, max_rows: int,
                width: timedelta = timedelta(hours=1)) -> int | None:
        self._answer()
        return 0

    def prune(self, older_than: timedelta) -> Pruned | None:
        self._answer()
        return Pruned(0, 0, datetime.now(UTC) - older_than)

    def transaction(self) -> FakeTransaction:
        return FakeTransaction(pid=next(self._ids) + 10_000)

    def terminate_backend(self, pid: int) -> None:
        with self._changed:
            self._answer()
            self.terminated.append(pid)

    # -- inside ------------------------------------------------------------------------------

    def _answer(self) -> None:
        """Raise as the store does while the server is away."""
        if self.down:
            with self._changed:
                self.failed_calls += 1
                self._changed.notify_all()
            raise DatabaseUnavailable("database error: server closed the connection")

    def _record(self, wf: Workflow, key: str, op: str, column: str, old: Any, new: Any,
                old_row: dict[str, Any], new_row: dict[str, Any]) -> Record:
        event = Event(id=next(self._ids), workflow=wf.name, key=key, column=column, op=op,
                      old_value=None if old is None else str(old),
                      new_value=None if new is None else str(new), old_row=dict(old_row),
                      new_row=dict(new_row), attempt=0, created_at=datetime.now(UTC))
        record = Record(event, run_after=self.clock())
        if column == wf.column and event.new_value in wf.unserved_states():
            record.status, record.outcome = EventStatus.DONE, Outcome.NO_HANDLER
        self.events[event.id] = record
        self._changed.notify_all()
        return record

    def _change(self, wf: Workflow, key: str, values: dict[str, Any]) -> None:
        old = self.rows[(wf.name, key)]
        new = old | values
        self.rows[(wf.name, key)] = new
        for column in (wf.column, *wf.watch):
            if old.get(column) != new.get(column):
                self._record(wf, key, "UPDATE", column, old.get(column), new.get(column), old,
                             new)

    def _write(self, record: Record, result: Result) -> Outcome:
        if result.error is not None:
            self.errors.append((record.event.id, record.attempts, result.error))
        self.history.append(("finish", record.event.id))
        if result.outcome is Outcome.RETRY:
            record.status, record.run_after = PENDING, self.clock() + result.delay_s
            return Outcome.RETRY
        outcome: Outcome = result.outcome
        if result.next is not None:
            outcome = self._write_back(result, result.next.state, dict(result.next.values))
        record.status, record.outcome = result.status, outcome
        return outcome

    def _write_back(self, result: Result, state: str | None, values: dict[str, Any]) -> Outcome:
        event = result.event
        wf = self.workflows[event.workflow]
        if self.rows[(event.workflow, event.key)][wf.column] != event.new_row.get(wf.column):
            return Outcome.DEAD if result.outcome is Outcome.DEAD else Outcome.STALE
        self._change(wf, event.key, values | ({wf.column: state} if state else {}))
        return result.outcome

    def _runnable(self) -> list[Record]:
        """Pending events that are due and first in their row, oldest first."""
        now = self.clock()
        return [r for r in sorted(self.events.values(), key=lambda r: r.event.id)
                if r.status is PENDING and r.run_after <= now and self._first_of_row(r)]

    def _first_of_row(self, record: Record) -> bool:
        e = record.event
        return not any(o.event.workflow == e.workflow and o.event.key == e.key
                       and o.event.id < e.id and o.blocks() for o in self.events.values())

    def _next_of_rows(self, rows: list[tuple[str, str]]) -> list[Record]:
        now = self.clock()
        out = []
        for workflow, key in rows:
            open_ = sorted((r for r in self.events.values() if r.event.workflow == workflow
                            and r.event.key == key and r.blocks()), key=lambda r: r.event.id)
            if open_ and all(r.status is PENDING for r in open_) and not open_[0].suspect \
                    and open_[0].run_after <= now:
                out.append(open_[0])
        return out

    def _take(self, record: Record) -> Event:
        record.status = RUNNING
        record.attempts += 1
        record.claimed_at.append(self.clock())
        self.history.append(("claim", record.event.id))
        self._changed.notify_all()
        return replace(record.event, attempt=record.attempts)
