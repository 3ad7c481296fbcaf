"""What the dispatcher loop claims next, and when.

The intake's mode says what may be claimed: Shared (events side by side, while slots are free),
Draining (an event whose dispatcher died waits to run alone: nothing new until the work in hand
is done) and Solo (that event runs, alone: if its handler kills this process too, no other
event's attempt goes with it). ``wanted`` says whether more may be waiting than the last claim
took: a NOTIFY, a poll tick or a full batch set it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from orchestrator.events import Event
from orchestrator.verbs import EventQueue

log = logging.getLogger("orchestrator.dispatcher")  # its lines are the dispatcher's


@dataclass(frozen=True, slots=True)
class Shared:
    """Events run side by side: claim while slots are free."""


@dataclass(frozen=True, slots=True)
class Draining:
    """An event whose dispatcher died waits to run alone: claim nothing new until the work in
    hand is done, and give back the events that writes hand over."""


@dataclass(frozen=True, slots=True)
class Solo:
    """Event ``event_id``, whose dispatcher died while running it, runs alone: claim nothing
    until it is done."""

    event_id: int


class Holding(Protocol):
    """What a dispatcher holds, as the intake sees it (``inhand.InHand``)."""

    @property
    def taken(self) -> int:
        """Slots taken: attempts running and claimed events waiting for one."""

    def __len__(self) -> int:
        """Events in hand, results not yet written included."""


Mode = Shared | Draining | Solo
SHARED, DRAINING = Shared(), Draining()


class Intake:
    """Claims for one dispatcher of ``concurrency`` slots, at most ``batch_size`` at a time.
    Every method that claims raises DatabaseUnavailable as the store does."""

    def __init__(self, store: EventQueue, *, concurrency: int, batch_size: int) -> None:
        self._store = store
        self._concurrency = concurrency
        self._batch_size = batch_size
        self.mode: Mode = SHARED
        self.wanted = True

    def _limit(self, in_hand: int) -> int:
        return min(self._batch_size, self._concurrency - in_hand)

    def ready(self, hand: Holding) -> bool:
        """Whether a claim now may take something, with ``hand`` held."""
        if not self.wanted or self._limit(hand.taken) <= 0:
            return False
        match self.mode:
            case Solo():
                return False
            case Draining():
                return len(hand) == 0
        return True

    def claim(self, hand: Holding) -> list[Event]:
        """The next events to run: a batch for the slots ``hand`` leaves free, or in Draining
        with nothing in ``hand`` (results not yet written included), one suspect."""
        limit = self._limit(hand.taken)
        if limit <= 0:
            return []
        match self.mode:
            case Solo():
                return []
            case Draining():
                return [] if len(hand) else self._claim_suspect()
        events = self._store.claim(limit)
        self.wanted = len(events) == limit
        return events

    def _claim_suspect(self) -> list[Event]:
        self.mode = SHARED
        self.wanted = True
        events = self._store.claim(1, suspect=True)
        if events:
            self.mode = Solo(events[0].id)
            log.info("event %s: its dispatcher died while running it; running it alone",
                     events[0].id)
        return events

    def claim_timers(self, hand: Holding) -> list[Event]:
        """Deadline timers come due (not while a suspect runs alone)."""
        limit = self._limit(hand.taken)
        if limit <= 0 or isinstance(self.mode, Solo):
            return []
        return self._store.claim_timers(limit)

    def look_for_suspects(self) -> None:
        """If events wait to be run alone, stop taking new work until the work in hand is done,
        then run one of them."""
        if isinstance(self.mode, Shared) and self._store.has_suspects():
            self.mode = DRAINING
            self.wanted = True

    def done(self, event_id: int) -> None:
        """``event_id`` is no longer in hand: if it ran alone, events run side by side again."""
        if self.mode == Solo(event_id):
            self.mode = SHARED

    def not_started(self, event_ids: set[int]) -> None:
        """Claimed events that did not start: put back to wait for a limit's turn, their
        claims given back in an outage, or failed before starting (related data unreadable).
        One that was to run alone no longer holds claims up."""
        for event_id in event_ids:
            self.done(event_id)

    @property
    def takes_handoffs(self) -> bool:
        """Whether events that writes hand over are run here (else they are given back)."""
        return not isinstance(self.mode, Draining)
