"""What an attempt at an event came to (Outcome), the status that leaves the event in
(EventStatus), and the Result the loop writes. Domain types only: nothing here touches the
database, and the store, the loop, logs and metrics all speak this one vocabulary.

The enum values are the text stored in ``orchestrator.events`` (``status`` and ``outcome``) and
shown by the CLI, so they never change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from orchestrator.events import Event, Next


class EventStatus(StrEnum):
    """Where an event is in its life (``orchestrator.events.status``)."""

    PENDING = "pending"  #: waiting to be claimed: new, retried, released, or a timer to come
    RUNNING = "running"  #: claimed by a dispatcher, under a lease
    DONE = "done"  #: finished; its outcome says how
    DEAD = "dead"  #: given up on, until an operator redrives it


class Outcome(StrEnum):
    """What an attempt came to (``orchestrator.events.outcome``, and what a write reports)."""

    APPLIED = "applied"  #: the handler's Next was written to the row (or a deadline moved it)
    STALE = "stale"  #: the row had moved on from the state the event saw: nothing written
    NOOP = "noop"  #: the handler returned None: nothing to write
    NO_HANDLER = "no_handler"  #: no handler is registered for this change
    RETRY = "retry"  #: the attempt failed; the event is pending again (reported, not stored)
    DEAD = "dead"  #: the attempts ran out, or the handler failed for good
    CANCELLED = "cancelled"  #: a deadline whose row left the state first (set by the trigger)

    @property
    def status(self) -> EventStatus:
        """The event's status once this outcome is written."""
        if self is Outcome.RETRY:
            return EventStatus.PENDING
        if self is Outcome.DEAD:
            return EventStatus.DEAD
        return EventStatus.DONE


@dataclass(frozen=True, slots=True)
class Result:
    """What one attempt at an event came to, ready to be written.

    ``outcome`` is what the attempt asks to record; the write may record another (APPLIED
    becomes STALE when the row moved on meanwhile). APPLIED and DEAD write ``next`` (if any) to
    the row with compare-and-set; DEAD's ``next`` moves the row to the workflow's failure state.
    RETRY puts the event back in the queue after ``delay_s``. ``error`` is recorded with the
    attempt.
    """

    event: Event
    outcome: Outcome
    handler: str | None = None
    next: Next | None = None
    error: str | None = None
    delay_s: float = 0.0

    @property
    def status(self) -> EventStatus:
        """The event's status once this result is written."""
        return self.outcome.status


@dataclass(slots=True)
class FinishReport:
    """What a finish call wrote: each event's outcome as recorded (an event missing here was no
    longer ours), the events handed straight to this dispatcher, and results whose write failed,
    with the error, to record as failed attempts."""

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    handoffs: list[Event] = field(default_factory=list)
    rejected: list[tuple[Result, str]] = field(default_factory=list)

    def merge(self, other: FinishReport) -> None:
        self.outcomes.update(other.outcomes)
        self.handoffs += other.handoffs
        self.rejected += other.rejected


@dataclass(frozen=True, slots=True)
class Pruned:
    """What a prune removed (or, in a dry run, would remove): ``events`` finished events in
    ``partitions`` partitions of history; every finished event before ``before`` is then gone
    (None: nothing was removed)."""

    events: int
    partitions: int
    before: datetime | None
