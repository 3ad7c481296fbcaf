"""The dispatcher loop: wait for a message or a tick, write finished results, claim, start.

One thread owns the loop and every database write of the engine's own; handlers run on worker
threads and report back through the inbox (the runner's Ran, Finished and Lost; a Wake when a
NOTIFY arrives or the loop is asked to stop). Results that arrive while a write is under way
are written together in the next one (group commit), and the events those writes create for
the same rows are handed straight back to workers (or wait for a slot). A handler's slot is
free once its result is in (inhand.py): when the results to write move no row, the loop claims
for the free slots before it writes, so new handlers run during the write-back.

What to claim, and when, is the Intake's (intake.py). While the database is unreachable the
loop holds an Outage and tries again with backoff; results it could not write are kept and
written once it is back.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from orchestrator import limits
from orchestrator.backoff import reconnect_delay_s
from orchestrator.config import Settings
from orchestrator.credentials import PasswordProvider
from orchestrator.db import Listener
from orchestrator.errors import DatabaseUnavailable
from orchestrator.events import Event
from orchestrator.inhand import InHand
from orchestrator.intake import Intake
from orchestrator.logs import EventLog
from orchestrator.observe import Observer, Observers
from orchestrator.outcomes import FinishReport, Outcome, Result
from orchestrator.registry import Registry
from orchestrator.retention import ARCHIVE_EVERY_S, PRUNE_EVERY_S, Retention
from orchestrator.runner import Clock, Finished, Job, Lost, Ran, Report, Runner
from orchestrator.verbs import EventQueue

log = logging.getLogger(__name__)

# How often a running dispatcher checks that `migrate` did not install other definitions or
# handlers since it started (a rolling deploy): if so it stops, and its supervisor restarts it
# with the new code.
DEFINITION_CHECK_S = 15.0


def dispatcher_name() -> str:
    """A name unique to this process: host, pid and a random suffix (fencing relies on it)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Wake:
    """Claim soon (a NOTIFY arrived), or look at the stop flag (stop was called)."""


WAKE = Wake()
Message = Wake | Report


@dataclass(slots=True)
class Outage:
    """The database failed ``failures`` times in a row; the loop tries again at ``retry_at``."""

    failures: int = 0
    retry_at: float = 0.0

    def failed(self, now: float) -> float:
        """Count one more failure; the seconds until the next try (growing with each)."""
        self.failures += 1
        delay = reconnect_delay_s(self.failures)
        self.retry_at = now + delay
        return delay


@dataclass
class Stats:
    """What one dispatcher did, by outcome."""

    claimed: int = 0
    handed_off: int = 0
    applied: int = 0
    stale: int = 0
    noop: int = 0
    no_handler: int = 0
    retried: int = 0
    dead: int = 0
    lost: int = 0
    timed_out: int = 0
    waited: int = 0  #: claims put back to wait for a fleet-wide limit's turn

    def count(self, outcome: Outcome) -> None:
        """Count one outcome a write recorded."""
        match outcome:
            case Outcome.APPLIED:
                self.applied += 1
            case Outcome.STALE:
                self.stale += 1
            case Outcome.NOOP:
                self.noop += 1
            case Outcome.NO_HANDLER:
                self.no_handler += 1
            case Outcome.RETRY:
                self.retried += 1
            case Outcome.DEAD:
                self.dead += 1

    def record(self, results: Sequence[Result], report: FinishReport,
               observer: Observer) -> None:
        """Count what a write recorded for ``results`` and tell ``observer`` (which logs each
        attempt); a result the write did not record lost its claim meanwhile."""
        rejected = {r.event.id for r, _ in report.rejected}
        for result in results:
            event = result.event
            outcome = report.outcomes.get(event.id)
            observer.finished(result, outcome)
            if outcome is not None:
                self.count(outcome)
            elif event.id not in rejected:
                self.lost += 1
                log.warning("event %s: claim lost (lease expired?); outcome discarded", event.id)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Chore:
    """A background task of the loop, run at most every ``every_s`` seconds."""

    def __init__(self, every_s: float, run: Callable[[], Any], now: float, *,
                 first_s: float | None = None) -> None:
        self.every_s = every_s
        self._run = run
        self.next_at = now + (every_s if first_s is None else first_s)

    def run_if_due(self, now: float) -> None:
        if now >= self.next_at:
            self.next_at = now + self.every_s
            self._run()


class Dispatcher:
    """Claims events and runs their handlers until stopped (or, with ``until_idle``, until no
    event is pending or running anywhere). ``run`` returns the Stats.

    ``listen_dsn``: where to LISTEN for new events (None: poll only). ``clock``: the monotonic
    time the loop schedules by (tests pass their own).
    """

    def __init__(self, registry: Registry, store: EventQueue, settings: Settings, *,
                 listen_dsn: str | None, until_idle: bool = False,
                 password: PasswordProvider | None = None,
                 observer: Observer | None = None, clock: Clock = time.monotonic) -> None:
        self.registry = registry
        self.store = store
        self.settings = settings
        self.until_idle = until_idle
        self.stats = Stats()
        # Every finished attempt is logged; metrics, when on, observe the same hooks.
        self.observer = Observers(EventLog(), *([observer] if observer else []))
        self._clock = clock
        self._inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._runner = Runner(registry, store, settings, self._inbox.put, self.observer,
                              clock=clock)
        self._listener = (Listener(listen_dsn, self.wake, ping_s=settings.listen_ping_s,
                                   password=password) if listen_dsn else None)
        self._hand = InHand(settings.concurrency)
        self._stopping = threading.Event()
        self._wake_queued = False
        self._intake = Intake(store, concurrency=settings.concurrency,
                              batch_size=settings.batch_size)
        self._outage: Outage | None = None
        self._chores = self._schedule_chores(clock())

    def _schedule_chores(self, now: float) -> list[Chore]:
        poll_s, lease_s = self.settings.poll_interval_s, self.settings.lease_s
        retention = Retention(self.store, self.settings.retention)
        return [
            Chore(poll_s, self._poll, now),
            Chore(lease_s / 3, self._heartbeat, now),
            Chore(min(lease_s / 2, 5.0), self.store.requeue_expired, now),
            Chore(DEFINITION_CHECK_S, self._verify_definitions, now),
            Chore(poll_s, self._claim_timers, now),
            Chore(poll_s, self._intake.look_for_suspects, now),
            Chore(ARCHIVE_EVERY_S, retention.archive, now),
            Chore(PRUNE_EVERY_S, retention.prune, now, first_s=lease_s / 3),
        ]

    @property
    def listener(self) -> Listener | None:
        """The LISTEN connection (None when there is none), for health reports."""
        return self._listener

    # -- control, from any thread ------------------------------------------------------------

    def wake(self) -> None:
        """Ask the loop to claim soon (a NOTIFY arrived)."""
        if not self._wake_queued:
            self._wake_queued = True
            self._inbox.put(WAKE)

    def stop(self) -> None:
        """Stop claiming; finish or release what is in hand, then return from run()."""
        self._stopping.set()
        self._inbox.put(WAKE)

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> Stats:
        """Run the loop on this thread until stopped (or idle, with ``until_idle``).

        Raises NotMigrated or DefinitionError when the database holds no or other definitions
        of the workflows, at the start or when a later check finds them changed.
        """
        self.store.use_workflows(list(self.registry.workflows.values()))
        if self._listener:
            self._listener.start()
        try:
            while not self._stopping.is_set():
                self._step()
                if self.until_idle and self._idle():
                    break
        finally:
            self._shutdown()
        return self.stats

    def _step(self) -> None:
        for message in self._drain(self._wait_s()):
            self._accept(message)
        now = self._clock()
        self._expire(now)
        if self._outage and now < self._outage.retry_at:
            return
        self._guarded(self._write_and_claim, now)

    def _write_and_claim(self, now: float) -> None:
        if self._outage:
            self._recover(self._outage)
        if self._hand.can_start and not self._stopping.is_set():
            self._run(self._hand.next_ready())
        if not self._hand.moves_rows:  # else the write goes first: it hands rows' next events over
            self._fill()
        if self._hand.unwritten:
            self._write()
            self._fill()
        for chore in self._chores:
            chore.run_if_due(now)

    def _fill(self) -> None:
        """Claim for the free slots, a batch per claim (before a write that only records
        outcomes, so that new handlers run during it)."""
        while not self._stopping.is_set() and self._intake.ready(self._hand):
            self._take(self._intake.claim(self._hand))

    def _wait_s(self) -> float:
        now = self._clock()
        if self._outage and now < self._outage.retry_at:
            return self._outage.retry_at - now
        if self._hand.unwritten or self._hand.can_start or self._intake.ready(self._hand):
            return 0.0
        deadlines = [c.next_at for c in self._chores]
        deadlines += [job.deadline for job in self._hand.running.values()]
        return max(0.0, min(deadlines) - now)

    def _drain(self, timeout_s: float) -> Iterable[Message]:
        try:
            yield self._inbox.get(timeout=timeout_s) if timeout_s > 0 else self._inbox.get_nowait()
            while True:
                yield self._inbox.get_nowait()
        except queue.Empty:
            return

    def _accept(self, message: Message) -> None:
        match message:
            case Wake():
                self._wake_queued = False
                self._intake.wanted = True
            case Ran(job=job, result=result):
                self._hand.answered(job, result)
            case Finished(job=job, result=result, report=report):
                self._let_go(job.event.id)
                self.stats.record([result], report, self.observer)
                self._after_write(report)
            case Lost(job=job, error=error):
                # Its claim is released after reconnecting, and the event runs again.
                self._let_go(job.event.id)
                self._db_failed(error)

    def _let_go(self, event_id: int) -> None:
        """``event_id`` is no longer in hand; if it ran alone, others may run again."""
        self._hand.running.pop(event_id, None)
        self._intake.done(event_id)

    # -- taking work -------------------------------------------------------------------------

    def _poll(self) -> None:
        """Claim even without a NOTIFY: one may have been missed, or a retry came due."""
        self._intake.wanted = True

    def _claim_timers(self) -> None:
        if not self._stopping.is_set():
            self._take(self._intake.claim_timers(self._hand))

    def _take(self, events: Sequence[Event]) -> None:
        self.stats.claimed += len(events)
        self._start(events)

    def _start(self, events: Sequence[Event]) -> None:
        if self._stopping.is_set():  # claimed as the stop came: back to the queue, uncounted
            if events:
                released = self.store.release([e.id for e in events])
                log.warning("stopping: released %d events claimed as the stop came", released)
            return
        self.observer.claimed(events)
        self._run(self._hand.wait_for_slots(events))

    def _run(self, events: Sequence[Event]) -> None:
        """Start ``events``, each with a slot of its own."""
        now = self._clock()
        going = self._with_related(self._admit(events))
        for event in going:
            started = self._runner.start(event, now)
            if isinstance(started, Job):
                self._hand.running[event.id] = started
            else:
                self._hand.unwritten.append(started)
        self._intake.not_started({e.id for e in events} - {e.id for e in going})

    def _admit(self, events: Sequence[Event]) -> list[Event]:
        """The events that won their turn of their limits; none while the server is away."""
        try:
            admitted, waited = limits.take_turns(events, self.registry, self.store, self.observer)
        except DatabaseUnavailable as exc:
            self._db_failed(exc)
            return []
        self.stats.waited += waited
        return admitted

    def _with_related(self, events: Sequence[Event]) -> list[Event]:
        """``events`` with their related data, read for those a handler will run. Events whose
        related data cannot be read fail this attempt; while the database is unreachable
        none starts (their claims are released once it is back)."""
        wanted = [e for e in events if e.op != "TIMER"
                  and self.registry.workflows[e.workflow].related and self.registry.route(e)]
        if not wanted:
            return list(events)
        try:
            ready, failed = self.store.with_related(wanted)
        except DatabaseUnavailable as exc:
            self._db_failed(exc)
            return []
        for event, error in failed:
            self._hand.unwritten.append(
                self._runner.failure(event, self.registry.route(event), str(error)))
        read = {e.id: e for e in ready}
        gone = {e.id for e, _ in failed}
        return [read.get(e.id, e) for e in events if e.id not in gone]

    # -- writing results ---------------------------------------------------------------------

    def _write(self) -> None:
        batch, self._hand.unwritten = self._hand.unwritten, []
        try:
            report = self.store.finish(batch)
        except DatabaseUnavailable:
            self._hand.unwritten = batch + self._hand.unwritten
            raise
        for result in batch:
            self._let_go(result.event.id)
        self.stats.record(batch, report, self.observer)
        self._after_write(report)

    def _after_write(self, report: FinishReport) -> None:
        for result, error in report.rejected:
            spec = self.registry.route(result.event)
            self._hand.unwritten.append(
                self._runner.failure(result.event, spec, f"write-back failed: {error}"))
        self.stats.handed_off += len(report.handoffs)
        if self._intake.takes_handoffs:
            self._start(report.handoffs)
        elif report.handoffs:
            self.store.release([e.id for e in report.handoffs])  # others take these

    def _expire(self, now: float) -> None:
        for job in list(self._hand.running.values()):
            if now >= job.deadline and (result := self._runner.expire(job)) is not None:
                self.stats.timed_out += 1
                log.warning("event %s: handler %s timed out after %gs", job.event.id,
                            job.spec.name, job.timeout_s)
                self._hand.unwritten.append(result)

    # -- chores ------------------------------------------------------------------------------

    def _verify_definitions(self) -> None:
        self.store.verify_workflows(list(self.registry.workflows.values()))

    def _heartbeat(self) -> None:
        if ids := self._hand.claimed_ids():
            self.store.extend_leases(ids)

    def _idle(self) -> bool:
        if self._hand or self._intake.wanted or self._outage:
            return False
        return not self._guarded(self.store.has_open_events, default=True)

    # -- database failures -------------------------------------------------------------------

    def _guarded(self, fn: Callable[..., Any], *args: Any, default: Any = None) -> Any:
        try:
            return fn(*args)
        except DatabaseUnavailable as exc:
            self._db_failed(exc)
            return default

    def _db_failed(self, exc: BaseException) -> None:
        self._outage = self._outage or Outage()
        delay = self._outage.failed(self._clock())
        log.warning("database unavailable (%s); retrying in %.1fs", exc, delay)

    def _recover(self, outage: Outage) -> None:
        """After a failure: give back claims whose handover was lost, then catch up."""
        released = self.store.release(all_but=self._hand.claimed_ids())
        if released:
            log.info("released %d claims lost in the database failure", released)
        log.info("database reachable again after %d failed tries", outage.failures)
        self._outage = None
        self._intake.wanted = True

    def _shutdown(self) -> None:
        self._stopping.set()
        if self._listener:
            self._listener.stop()
        deadline = self._clock() + self.settings.shutdown_grace_s
        waiting = self._hand.never_to_start()  # claimed, not started: given back below
        while (self._hand.running or self._hand.unwritten) and self._clock() < deadline:
            self._step()
        if leftover := [*self._hand.running, *waiting]:
            count = self._guarded(self.store.release, leftover, default=0)
            log.warning("stopped with %d handlers still running; released %d events",
                        len(self._hand.running), count)
        self._runner.stop()
