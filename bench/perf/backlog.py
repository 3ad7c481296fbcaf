"""Backlog drain: events created while no dispatcher runs, then drained by one.

The backlog's handler returns nothing, so draining is claiming and finishing alone; the clock
runs from the first claim to the last write (the events' own started/finished times). With
``related``, the backlog's workflow declares related data (a parent and children), read for
every claimed batch: the difference is what reading it costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.bench.case import drained, monitor, settle, wait_until
from orchestrator.bench.db import Session
from orchestrator.bench.dispatchers import Dispatchers, DispatcherSettings


@dataclass(frozen=True, slots=True)
class Backlog:
    events: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events, "seconds": round(self.seconds, 3),
                "events_per_s": round(self.events_per_s, 1)}


def drain(session: Session, dsn: str, settings: DispatcherSettings, *, events: int,
          related: bool = False) -> Backlog:
    """Create ``events`` pending events, then start a dispatcher and time the drain."""
    mark = settle(session)
    session.run("insert_related_backlog" if related else "insert_backlog", {"count": events})
    with monitor(dsn, session) as mon, Dispatchers(dsn, 1, settings, mon) as running:
        wait_until(lambda: drained(mon), what="backlog drain", alive=running.check_alive)
    row = session.run("drain", mark | {
        "workflow": "bench_related" if related else "bench_drain"})[0]
    return Backlog(int(row["events"]), float(row["seconds"] or 0.0))
