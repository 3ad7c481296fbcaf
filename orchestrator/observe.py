"""What a dispatcher tells observers as it works: events claimed, handlers run, results written.

Metrics and the per-event log are observers. Every call is made on the hot path, so an observer
only counts and logs; it never touches the database and never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from orchestrator.events import Event
from orchestrator.outcomes import Outcome, Result

log = logging.getLogger(__name__)


class Observer:
    """The hooks, each a no-op here; subclasses override what they need."""

    def claimed(self, events: Sequence[Event]) -> None:
        """The loop took ``events`` (claimed, handed over or due timers) and starts them."""

    def started(self, event: Event, handler: str) -> None:
        """On a worker thread, just before ``handler`` runs for ``event``."""

    def ran(self, event: Event, handler: str, duration_s: float) -> None:
        """On a worker thread: the handler returned or raised after ``duration_s`` (one that
        timed out is abandoned and never reported here)."""

    def waited(self, limit: str, count: int) -> None:
        """On the loop thread: ``count`` claimed events went back to the queue to wait for a
        turn of the fleet-wide limit named ``limit``."""

    def finished(self, result: Result, outcome: Outcome | None) -> None:
        """On the loop thread, after ``result`` was written: ``outcome`` is what the write
        recorded, or None when the write did not take (the claim was lost, or the result was
        refused and is retried as a failure)."""


class Observers(Observer):
    """Several observers as one. An observer that raises is logged and does not stop the
    others, nor the dispatcher."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def claimed(self, events: Sequence[Event]) -> None:
        for o in self.observers:
            _safely(o.claimed, events)

    def started(self, event: Event, handler: str) -> None:
        for o in self.observers:
            _safely(o.started, event, handler)

    def ran(self, event: Event, handler: str, duration_s: float) -> None:
        for o in self.observers:
            _safely(o.ran, event, handler, duration_s)

    def waited(self, limit: str, count: int) -> None:
        for o in self.observers:
            _safely(o.waited, limit, count)

    def finished(self, result: Result, outcome: Outcome | None) -> None:
        for o in self.observers:
            _safely(o.finished, result, outcome)


def _safely(hook: Callable[..., None], *args: object) -> None:
    try:
        hook(*args)
    except Exception:
        log.exception("an observer failed; the dispatcher carries on")
