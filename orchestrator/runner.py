"""Run one handler: on a worker thread (or, ``async def``, on the async loop), under a deadline,
and decide what its attempt came to.

A handler that returns is done; one that raises Retry or any error is retried with backoff until
its attempts run out, then dead; one that returns something illegal is dead at once (running it
again would return the same). Python cannot kill a thread: a handler past its deadline is
abandoned (its attempt fails, its database session is terminated) and a new worker replaces it;
an async handler past its deadline is cancelled. Worker threads start as sync handlers need
them, up to the dispatcher's concurrency; async handlers need none.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from orchestrator import asyncloop
from orchestrator.backoff import retry_delay_s
from orchestrator.config import Settings
from orchestrator.errors import (
    BadOutcome,
    HandlerTimeout,
    IllegalTransition,
    OrchestratorError,
    SyncOnly,
)
from orchestrator.events import Event, Next, Retry, as_outcome
from orchestrator.observe import Observer
from orchestrator.outcomes import EventStatus, FinishReport, Outcome, Result
from orchestrator.registry import HandlerSpec, Registry
from orchestrator.verbs import HandlerTransaction, RunnerStore

log = logging.getLogger(__name__)

DEADLINE_HANDLER = "deadline"
Clock = Callable[[], float]


class Context:
    """What a handler may use besides its event.

    ``db`` is a connection inside a transaction that commits together with the handler's
    outcome (or rolls back if the attempt fails), so rows a handler writes there change exactly
    once. The transaction begins on first use; a handler that never touches ``db`` holds no
    connection while it runs. ``db`` is a blocking connection, for sync handlers only: an async
    handler asking for it gets SyncOnly (it would stall every other async handler).
    ``table`` is the workflow's (schema, table); ``max_attempts`` the event's limit.
    """

    def __init__(self, tx: HandlerTransaction, deadline: float, workflow: str,
                 clock: Clock = time.monotonic, *, table: tuple[str, str] = ("", ""),
                 max_attempts: int = 1, sync: bool = True) -> None:
        self._tx = tx
        self._deadline = deadline
        self._clock = clock
        self._sync = sync
        self.table = table
        self.max_attempts = max_attempts
        self._workflow = workflow

    @property
    def log(self) -> logging.Logger:
        """The workflow's handler logger, ``orchestrator.handler.<workflow>`` (looked up when
        a handler asks: the lookup takes logging's lock)."""
        return logging.getLogger(f"orchestrator.handler.{self._workflow}")

    @property
    def db(self) -> Any:
        if not self._sync:
            raise SyncOnly()
        return self._tx.connection

    @property
    def remaining_s(self) -> float:
        """Seconds left before the handler's timeout."""
        return max(0.0, self._deadline - self._clock())


class JobState(Enum):
    """Where an attempt is; a worker and the loop's timeout race to move it on, under its lock."""

    RUNNING = "running"  #: the handler runs on a worker thread
    FINISHING = "finishing"  #: the handler returned in time; its result is on its way
    ABANDONED = "abandoned"  #: the handler outran its timeout; whatever it returns is dropped


@dataclass(eq=False)
class Job:
    """One attempt at an event, handed to a worker thread."""

    event: Event
    spec: HandlerSpec
    timeout_s: float
    deadline: float
    tx: HandlerTransaction
    state: JobState = JobState.RUNNING
    lock: threading.Lock = field(default_factory=threading.Lock)
    task: asyncloop.Started | None = None  #: an async handler's, on the loop


# -- what the runner reports to the loop, from a worker thread ----------------------------------

@dataclass(frozen=True, slots=True)
class Ran:
    """The handler came to ``result``; the loop writes it with its next batch."""

    job: Job
    result: Result


@dataclass(frozen=True, slots=True)
class Finished:
    """The handler's own transaction wrote ``result`` with its writes; ``report`` says how."""

    job: Job
    result: Result
    report: FinishReport


@dataclass(frozen=True, slots=True)
class Lost:
    """The handler's own transaction could not write its result (the database went away): its
    writes rolled back, and its claim is released once the database is back."""

    job: Job
    error: OrchestratorError


Report = Ran | Finished | Lost


class Runner:
    """Routes events to handlers and turns each attempt into a Result, reported to ``deliver``
    (a Ran, Finished or Lost) from the worker thread that ran it."""

    def __init__(self, registry: Registry, store: RunnerStore, settings: Settings,
                 deliver: Callable[[Report], None], observer: Observer | None = None, *,
                 clock: Clock = time.monotonic) -> None:
        self.registry = registry
        self.store = store
        self.settings = settings
        self._deliver = deliver
        self._observer = observer or Observer()
        self._clock = clock
        self._workers = WorkerPool(settings.concurrency, self._execute)

    def start(self, event: Event, now: float) -> Job | Result:
        """Begin an attempt: a Job running on a worker, or at once a Result when there is
        nothing to run (no handler for this change, or attempts already used up)."""
        if event.op == "TIMER":  # a deadline came due: move the row if it is still there
            return Result(event, Outcome.APPLIED, handler=DEADLINE_HANDLER,
                          next=Next(event.new_value))
        spec = self.registry.route(event)
        if spec is None:
            return Result(event, Outcome.NO_HANDLER)
        if event.attempt > self._max_attempts(spec):
            return self.failure(event, spec, "gave up: an earlier attempt never finished "
                                "(its dispatcher stopped)", final=True)
        timeout_s = spec.timeout_s or self.settings.handler_timeout_s
        tx = self.store.transaction()
        job = Job(event, spec, timeout_s, now + timeout_s, tx)
        if spec.is_async:
            job.task = asyncloop.start(self._execute_async(job))
        else:
            self._workers.submit(job)
        return job

    def expire(self, job: Job) -> Result | None:
        """Abandon ``job`` if its handler is still running; the failed attempt's Result."""
        with job.lock:
            if job.state is not JobState.RUNNING:
                return None
            job.state = JobState.ABANDONED
        if job.task is not None:
            job.task.cancel()
        else:
            if job.tx.pid is not None:
                self._terminate(job.tx.pid)
            self._workers.replace_stuck()
        return self.failure(job.event, job.spec, str(HandlerTimeout(job.timeout_s)))

    def _max_attempts(self, spec: HandlerSpec | None) -> int:
        """The handler's own limit, else the settings'."""
        return (spec and spec.max_attempts) or self.settings.max_attempts

    def _terminate(self, pid: int) -> None:
        try:
            self.store.terminate_backend(pid)
        except OrchestratorError as exc:
            log.warning("could not end the session of a timed-out handler: %s", exc)

    def failure(self, event: Event, spec: HandlerSpec | None, error: str, *,
                delay_s: float | None = None, final: bool = False) -> Result:
        """A failed attempt: retried with backoff while attempts remain, else dead (and the row
        moved to the workflow's failure state when it declares one). A ``delay_s`` that is not
        a finite number of seconds at least 0 is the backoff's."""
        max_attempts = self._max_attempts(spec)
        name = spec.name if spec else None
        if not final and event.attempt < max_attempts:
            if delay_s is None or not (math.isfinite(delay_s) and delay_s >= 0):
                delay_s = retry_delay_s(event.attempt, base_s=self.settings.retry_base_s,
                                        max_s=self.settings.retry_max_s)
            return Result(event, Outcome.RETRY, handler=name, error=error, delay_s=delay_s)
        wf = self.registry.workflows.get(event.workflow)
        state = event.new_row.get(wf.column) if wf and wf.column else None
        move = (Next(wf.failure_state) if wf and wf.failure_state and state not in wf.terminal
                else None)
        return Result(event, Outcome.DEAD, handler=name, next=move,
                      error=f"{error} (attempt {event.attempt} of {max_attempts})")

    # -- on a worker thread ------------------------------------------------------------------

    def _execute(self, job: Job) -> None:
        self._observer.started(job.event, job.spec.name)
        began = self._clock()
        result = self._attempt(job)
        self._report(job, result, self._clock() - began)

    async def _execute_async(self, job: Job) -> None:
        """An async handler's attempt, on the loop; a timeout cancels it (nothing to report)."""
        self._observer.started(job.event, job.spec.name)
        began = self._clock()
        ctx = self._context(job)
        try:
            returned = await job.spec.fn(job.event, ctx) if job.spec.takes_context \
                else await job.spec.fn(job.event)
            result = self._returned(job, returned)
        except (Exception, SystemExit) as exc:
            result = self._raised(job, exc)
        self._report(job, result, self._clock() - began)

    def _report(self, job: Job, result: Result, ran_s: float) -> None:
        with job.lock:
            if job.state is JobState.ABANDONED:
                job.tx.close()
                return
            job.state = JobState.FINISHING
        self._observer.ran(job.event, job.spec.name, ran_s)
        if result.status is EventStatus.DONE and job.tx.started:
            self._finish_in_own_transaction(job, result)
            return
        job.tx.close()
        self._deliver(Ran(job, result))

    def _finish_in_own_transaction(self, job: Job, result: Result) -> None:
        try:
            report = self.store.finish([result], conn=job.tx.connection, quiet=False)
        except OrchestratorError as exc:
            job.tx.close()
            self._deliver(Lost(job, exc))
            return
        job.tx.close()
        self._deliver(Finished(job, result, report))

    def _context(self, job: Job) -> Context:
        wf = self.registry.workflows.get(job.event.workflow)
        return Context(job.tx, job.deadline, job.event.workflow, self._clock,
                       table=(wf.schema, wf.table) if wf else ("", ""),
                       max_attempts=self._max_attempts(job.spec), sync=not job.spec.is_async)

    def _attempt(self, job: Job) -> Result:
        event, spec = job.event, job.spec
        ctx = self._context(job)
        try:
            returned = spec.fn(event, ctx) if spec.takes_context else spec.fn(event)
            return self._returned(job, returned)
        except (Exception, SystemExit) as exc:  # a handler calling sys.exit() fails its attempt
            return self._raised(job, exc)

    def _returned(self, job: Job, returned: object) -> Result:
        try:
            return self._done(job.event, job.spec, as_outcome(returned))
        except (BadOutcome, IllegalTransition) as exc:
            return self._raised(job, exc)

    def _raised(self, job: Job, exc: BaseException) -> Result:
        """The Result of a handler that raised ``exc``."""
        event, spec = job.event, job.spec
        if isinstance(exc, Retry):
            return self.failure(event, spec, f"Retry: {exc}", delay_s=exc.delay_s)
        if isinstance(exc, BadOutcome | IllegalTransition):
            return self.failure(event, spec, f"{type(exc).__name__}: {exc}", final=True)
        log.debug("handler %s failed on event %s", spec.name, event.id, exc_info=exc)
        return self.failure(event, spec, f"{type(exc).__name__}: {exc}")

    def _done(self, event: Event, spec: HandlerSpec, next_: Next | None) -> Result:
        if next_ is None:
            return Result(event, Outcome.NOOP, handler=spec.name)
        wf = self.registry.workflow(event.workflow)
        if next_.state is not None:
            if wf.column is None:
                raise BadOutcome(f"workflow {wf.name!r} has no state column: return "
                                 "Next(values={...}) or write the row through ctx.db")
            wf.check(event.new_row.get(wf.column), next_.state)
        if unknown := set(next_.values) - self.store.columns(wf.name):
            raise BadOutcome(f"handler returned values for unknown columns {sorted(unknown)} "
                             f"of {wf.qualified_table}")
        if wf.column in next_.values:
            raise BadOutcome(f"set the state with Next(state=...), not values[{wf.column!r}]")
        return Result(event, Outcome.APPLIED, handler=spec.name, next=next_)

    @property
    def worker_threads(self) -> int:
        """Worker threads started so far (replacements of stuck ones included)."""
        return self._workers.started

    def stop(self) -> None:
        self._workers.stop()


class WorkerPool:
    """Threads that run jobs, started as jobs need them, up to ``size``; a stuck one is
    replaced, never killed."""

    def __init__(self, size: int, run: Callable[[Job], None]) -> None:
        self._run = run
        self._size = size
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job
        self._queued = 0  # jobs no thread took yet
        self._stuck = 0  # abandoned threads, each replaced

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._loop, daemon=True,
                                  name=f"orchestrator-worker-{len(self._threads)}")
        self._threads.append(thread)
        thread.start()

    def _loop(self) -> None:
        while (job := self._next()) is not None:
            try:
                self._run(job)
            except Exception:
                log.exception("worker failed on event %s", job.event.id)
            if job.state is JobState.ABANDONED:
                return  # a replacement took this thread's place

    def _next(self) -> Job | None:
        with self._lock:
            self._idle += 1
        job = self._jobs.get()
        with self._lock:
            self._idle -= 1
            self._queued -= job is not None
        return job

    def submit(self, job: Job) -> None:
        with self._lock:
            self._queued += 1
            if self._queued > self._idle and len(self._threads) - self._stuck < self._size:
                self._spawn()
        self._jobs.put(job)

    @property
    def started(self) -> int:
        return len(self._threads)

    def replace_stuck(self) -> None:
        with self._lock:
            self._stuck += 1
            self._spawn()

    def stop(self) -> None:
        with self._lock:
            for _ in self._threads:
                self._jobs.put(None)
