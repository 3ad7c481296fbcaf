"""The dispatcher loop: wait for a wake-up or a tick, write finished results, claim, start.

One thread owns the loop and every database write of the engine's own; handlers run on worker
threads and report back through the inbox. Results that arrive while a write is under way are
written together in the next one (group commit), and the events those writes create for the
same rows are handed straight back to workers.
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

from orchestrator.backoff import reconnect_delay_s
from orchestrator.config import Settings
from orchestrator.credentials import PasswordProvider
from orchestrator.db import Listener
from orchestrator.errors import DatabaseUnavailable
from orchestrator.events import Event
from orchestrator.logs import EventLog
from orchestrator.observe import Observer, Observers
from orchestrator.outcomes import FinishReport, Outcome, Result
from orchestrator.registry import Registry
from orchestrator.runner import Job, Runner
from orchestrator.store import Store

log = logging.getLogger(__name__)

WAKE = ("wake", None, None)
# How often a running dispatcher checks that `migrate` did not install other definitions or
# handlers since it started (a rolling deploy): if so it stops, and its supervisor restarts it
# with the new code.
DEFINITION_CHECK_S = 15.0


def dispatcher_name() -> str:
    """A name unique to this process: host, pid and a random suffix (fencing relies on it)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Chore:
    """A background task of the loop, run at most every ``every_s`` seconds."""

    def __init__(self, every_s: float, run: Callable[[], Any]) -> None:
        self.every_s = every_s
        self._run = run
        self.next_at = time.monotonic() + every_s

    def run_if_due(self, now: float) -> None:
        if now >= self.next_at:
            self.next_at = now + self.every_s
            self._run()


class Dispatcher:
    """Claims events and runs their handlers until stopped (or, with ``until_idle``, until no
    event is pending or running anywhere). ``run`` returns the Stats."""

    def __init__(self, registry: Registry, store: Store, settings: Settings, *,
                 listen_dsn: str | None, until_idle: bool = False,
                 password: PasswordProvider | None = None,
                 observer: Observer | None = None) -> None:
        self.registry = registry
        self.store = store
        self.settings = settings
        self.until_idle = until_idle
        self.stats = Stats()
        # Every finished attempt is logged; metrics, when on, observe the same hooks.
        self.observer = Observers(EventLog(), *([observer] if observer else []))
        self._inbox: queue.SimpleQueue[tuple[str, Any, Any]] = queue.SimpleQueue()
        self._runner = Runner(registry, store, settings, self._inbox.put, self.observer)
        self._listener = (Listener(listen_dsn, self.wake, ping_s=settings.listen_ping_s,
                                   password=password) if listen_dsn else None)
        self._in_flight: dict[int, Job] = {}
        self._unwritten: list[Result] = []
        self._stopping = threading.Event()
        self._wake_queued = False
        self._want_claim = True
        self._solo: int | None = None  # a suspect event running alone; no claims meanwhile
        self._draining = False  # letting the work in hand finish, to run a suspect alone
        self._db_failures = 0
        self._db_retry_at = 0.0
        self._poll = Chore(settings.poll_interval_s, self._request_claim)
        self._chores = [
            self._poll,
            Chore(settings.lease_s / 3, self._heartbeat),
            Chore(min(settings.lease_s / 2, 5.0), self.store.requeue_expired),
            Chore(DEFINITION_CHECK_S, self._verify_definitions),
            Chore(settings.poll_interval_s, self._claim_timers),
            Chore(settings.poll_interval_s, self._look_for_suspects),
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
        now = time.monotonic()
        self._expire(now)
        if now < self._db_retry_at:
            return
        self._guarded(self._write_and_claim, now)

    def _write_and_claim(self, now: float) -> None:
        if self._db_failures:
            self._recover()
        if self._unwritten:
            self._write()
        if self._want_claim and not self._stopping.is_set():
            self._claim()
        for chore in self._chores:
            chore.run_if_due(now)

    def _wait_s(self) -> float:
        now = time.monotonic()
        if now < self._db_retry_at:
            return self._db_retry_at - now
        if self._unwritten or (self._want_claim and self._free_slots() > 0
                               and self._solo is None
                               and not (self._draining and self._in_flight)):
            return 0.0
        deadlines = [c.next_at for c in self._chores]
        deadlines += [job.deadline for job in self._in_flight.values()]
        return max(0.0, min(deadlines) - now)

    def _drain(self, timeout_s: float) -> Iterable[tuple[str, Any, Any]]:
        try:
            yield self._inbox.get(timeout=timeout_s) if timeout_s > 0 else self._inbox.get_nowait()
            while True:
                yield self._inbox.get_nowait()
        except queue.Empty:
            return

    def _accept(self, message: tuple[str, Any, Any]) -> None:
        kind, job, payload = message
        if kind == "wake":
            self._wake_queued = False
            self._want_claim = True
        elif kind == "result":
            self._unwritten.append(payload)
        elif kind == "finished":
            self._in_flight.pop(job.event.id, None)
            if job.event.id == self._solo:
                self._solo = None
            self._count([payload[0]], payload[1])
            self._after_write(payload[1])
        elif kind == "lost":
            # The handler's own transaction failed to commit for want of a connection. Its
            # claim is released after reconnecting and the event runs again.
            self._in_flight.pop(job.event.id, None)
            self._solo = None if job.event.id == self._solo else self._solo
            self._db_failed(payload)

    def _request_claim(self) -> None:
        self._want_claim = True

    def _free_slots(self) -> int:
        return self.settings.concurrency - len(self._in_flight)

    def _claim(self) -> None:
        limit = min(self.settings.batch_size, self._free_slots())
        if limit <= 0 or self._solo is not None:
            return
        if self._draining:
            if not self._in_flight:
                self._start(self._claim_suspect())
            return
        events = self.store.claim(limit)
        self._want_claim = len(events) == limit
        self.stats.claimed += len(events)
        self._start(events)

    def _look_for_suspects(self) -> None:
        """At most once a poll interval: if events wait to be run alone, stop taking new work
        until the work in hand is done, then run one of them."""
        if self._solo is None and not self._draining and self.store.has_suspects():
            self._draining = True
            self._want_claim = True

    def _claim_timers(self) -> None:
        limit = min(self.settings.batch_size, self._free_slots())
        if limit > 0 and self._solo is None and not self._stopping.is_set():
            events = self.store.claim_timers(limit)
            self.stats.claimed += len(events)
            self._start(events)

    def _claim_suspect(self) -> list[Event]:
        """With nothing else in hand, one event whose dispatcher died, to run alone: if its
        handler kills the process again, no other event's attempt goes with it."""
        self._draining = False
        self._want_claim = True
        events = self.store.claim(1, suspect=True)
        self.stats.claimed += len(events)
        if events:
            self._solo = events[0].id
            log.info("event %s: its dispatcher died while running it; running it alone",
                     events[0].id)
        return events

    def _start(self, events: Sequence[Event]) -> None:
        if self._stopping.is_set():
            self.store.release([e.id for e in events])
            return
        self.observer.claimed(events)
        now = time.monotonic()
        for event in events:
            started = self._runner.start(event, now)
            if isinstance(started, Job):
                self._in_flight[event.id] = started
            else:
                self._unwritten.append(started)

    def _write(self) -> None:
        batch, self._unwritten = self._unwritten, []
        try:
            report = self.store.finish(batch)
        except DatabaseUnavailable:
            self._unwritten = batch + self._unwritten
            raise
        for result in batch:
            self._in_flight.pop(result.event.id, None)
            if result.event.id == self._solo:
                self._solo = None
        self._count(batch, report)
        self._after_write(report)

    def _after_write(self, report: FinishReport) -> None:
        for result, error in report.rejected:
            spec = self.registry.route(result.event)
            self._unwritten.append(
                self._runner.failure(result.event, spec, f"write-back failed: {error}"))
        self.stats.handed_off += len(report.handoffs)
        if self._draining and report.handoffs:  # make room for a suspect: others take these
            self.store.release([e.id for e in report.handoffs])
        else:
            self._start(report.handoffs)

    def _count(self, results: Sequence[Result], report: FinishReport) -> None:
        rejected = {r.event.id for r, _ in report.rejected}
        for result in results:
            event = result.event
            outcome = report.outcomes.get(event.id)
            self.observer.finished(result, outcome)  # logs it (logs.EventLog), counts it
            if outcome is not None:
                self.stats.count(outcome)
            elif event.id not in rejected:
                self.stats.lost += 1
                log.warning("event %s: claim lost (lease expired?); outcome discarded", event.id)

    def _expire(self, now: float) -> None:
        for job in list(self._in_flight.values()):
            if now >= job.deadline and (result := self._runner.expire(job)) is not None:
                self.stats.timed_out += 1
                log.warning("event %s: handler %s timed out after %gs", job.event.id,
                            job.spec.name, job.timeout_s)
                self._unwritten.append(result)

    def _verify_definitions(self) -> None:
        self.store.verify_workflows(list(self.registry.workflows.values()))

    def _heartbeat(self) -> None:
        ids = list(self._in_flight) + [r.event.id for r in self._unwritten]
        if ids:
            self.store.extend_leases(ids)

    def _idle(self) -> bool:
        if self._in_flight or self._unwritten or self._want_claim or self._db_failures:
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
        self._db_failures += 1
        delay = reconnect_delay_s(self._db_failures)
        self._db_retry_at = time.monotonic() + delay
        log.warning("database unavailable (%s); retrying in %.1fs", exc, delay)

    def _recover(self) -> None:
        """After a failure: give back claims whose handover was lost, then catch up."""
        released = self.store.release(all_but=list(self._in_flight))
        if released:
            log.info("released %d claims lost in the database failure", released)
        log.info("database reachable again after %d failed tries", self._db_failures)
        self._db_failures = 0
        self._want_claim = True

    def _shutdown(self) -> None:
        self._stopping.set()
        if self._listener:
            self._listener.stop()
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while (self._in_flight or self._unwritten) and time.monotonic() < deadline:
            self._step()
        leftover = list(self._in_flight)
        if leftover:
            count = self._guarded(self.store.release, leftover, default=0)
            log.warning("stopped with %d handlers still running; released %d events",
                        len(leftover), count)
        self._runner.stop()
