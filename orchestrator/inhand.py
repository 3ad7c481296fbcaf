"""What one dispatcher holds: attempts running, results waiting for the next write, and claimed
events waiting for a slot.

Only running attempts take one of the ``concurrency`` slots. An attempt's slot is free once its
result is back: the result waits for the next group write while the next event's handler
already runs. An event this dispatcher claimed that finds no slot free (an event a write
handed over while claims filled the slots) waits in ``ready`` and starts before anything new
is claimed. Every event in hand stays claimed by this dispatcher, its lease renewed
(``claimed_ids``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from orchestrator.events import Event
from orchestrator.outcomes import Result
from orchestrator.runner import Job


class InHand:
    """The events one dispatcher of ``concurrency`` slots holds."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.running: dict[int, Job] = {}  #: attempts under way, each holding a slot
        self.unwritten: list[Result] = []  #: results for the next write
        self.ready: deque[Event] = deque()  #: claimed, waiting for a slot

    @property
    def taken(self) -> int:
        """Slots taken or promised: attempts running and claimed events waiting for one."""
        return len(self.running) + len(self.ready)

    @property
    def moves_rows(self) -> bool:
        """Whether a result to be written moves its row (a new state or values): the write
        will likely hand the row's next event over."""
        return any(r.next is not None for r in self.unwritten)

    @property
    def can_start(self) -> bool:
        """Whether a claimed event waits and a slot is free for it."""
        return bool(self.ready) and len(self.running) < self.concurrency

    def answered(self, job: Job, result: Result) -> None:
        """``job``'s handler came to ``result``: its slot is free, its result written next."""
        self.running.pop(job.event.id, None)
        self.unwritten.append(result)

    def wait_for_slots(self, events: Sequence[Event]) -> list[Event]:
        """Of ``events`` (claimed, in order), those a free slot takes now; the rest wait in
        ``ready``, after the ones already waiting."""
        self.ready.extend(events)
        return self.next_ready()

    def next_ready(self) -> list[Event]:
        """The waiting events that free slots take now, oldest first."""
        free = self.concurrency - len(self.running)
        return [self.ready.popleft() for _ in range(min(free, len(self.ready)))]

    def never_to_start(self) -> list[int]:
        """Empty ``ready`` (the dispatcher stops); the ids that were waiting."""
        ids = [e.id for e in self.ready]
        self.ready.clear()
        return ids

    def claimed_ids(self) -> list[int]:
        """Every event this dispatcher holds the claim of (its lease must be kept)."""
        return [*self.running, *(r.event.id for r in self.unwritten),
                *(e.id for e in self.ready)]

    def __len__(self) -> int:
        """Events in hand: running, to be written, or waiting for a slot."""
        return len(self.running) + len(self.unwritten) + len(self.ready)
