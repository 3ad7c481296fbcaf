"""Retention, applied by the dispatchers themselves: finished events leave the queue for the
history soon after they finish (archive), and leave the history once older than the retention
(prune, whole hours at a time, by dropping partitions).

Every dispatcher runs both chores; the database lets one session at a time do either (an
advisory lock), and the others skip their turn rather than wait.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from orchestrator.verbs import EventQueue

log = logging.getLogger(__name__)

# Events finished this long ago leave the queue: long enough for a write-back's hand-over and
# the dashboard's last-minute sample to read them there, short enough to keep the queue small.
ARCHIVE_AFTER_S = 10.0
ARCHIVE_EVERY_S = 5.0
# Events moved per statement, and statements per turn (a turn can move 20,000 events a second).
ARCHIVE_BATCH = 10_000
ARCHIVE_ROUNDS = 10
PRUNE_EVERY_S = 300.0


def partition_width(retention: timedelta) -> timedelta:
    """How wide the history's partitions are made: a day when the retention is two days or
    more (a read of a row's history probes every partition: few of them), else an hour (an
    event stays at most a partition's width past the retention)."""
    return timedelta(days=1) if retention >= timedelta(days=2) else timedelta(hours=1)


class Retention:
    """The two retention chores of one dispatcher over ``store``."""

    def __init__(self, store: EventQueue, retention: timedelta) -> None:
        self.store = store
        self.retention = retention

    def archive(self) -> int:
        """Move finished events to the history, a batch at a time until none is left or the
        turn is over; how many moved (0 when another session held the turn)."""
        total = 0
        for _ in range(ARCHIVE_ROUNDS):
            moved = self.store.archive(after_s=ARCHIVE_AFTER_S, max_rows=ARCHIVE_BATCH,
                                       width=partition_width(self.retention))
            total += moved or 0
            if moved is None or moved < ARCHIVE_BATCH:
                break
        return total

    def prune(self) -> int:
        """Remove finished events older than the retention; how many (0 when another session
        held the turn)."""
        pruned = self.store.prune(self.retention)
        if pruned is None or (not pruned.events and not pruned.partitions):
            return 0
        log.info("retention: removed %d finished events (%d partitions of history), every one "
                 "finished before %s", pruned.events, pruned.partitions, pruned.before)
        return pruned.events
