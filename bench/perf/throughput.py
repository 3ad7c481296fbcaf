"""Sustained throughput: N orders through the whole workflow, and what each transition cost.

The orders are placed in one transaction while the dispatchers listen; the clock runs from that
commit to the last order's terminal state. Costs come from the server: its commit counter
(less the bench's own transactions), the WAL position, the notifications a listener received.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.bench.case import drained, monitor, reached, settle, wait_until
from orchestrator.bench.db import NotifyCounter, Session
from orchestrator.bench.dispatchers import Dispatchers, DispatcherSettings


@dataclass(frozen=True, slots=True)
class Throughput:
    """One sustained run: its figures and its costs."""

    dispatchers: int
    orders: int
    transitions: int
    seconds: float
    commits: int
    notifies: int
    wal_bytes: int
    connections_per_dispatcher: int
    peak_rss_mb: float | None
    cpu_s: float | None

    @property
    def transitions_per_s(self) -> float:
        return self.transitions / self.seconds if self.seconds > 0 else 0.0

    def per_transition(self, amount: float) -> float:
        return amount / self.transitions if self.transitions else 0.0


@dataclass(frozen=True, slots=True)
class Counters:
    wal_lsn: int
    commits: int

    @classmethod
    def read(cls, session: Session) -> Counters:
        row = session.run("counters")[0]
        return cls(_lsn(row["lsn"]), int(row["commits"]))


def sustained(session: Session, dsn: str, settings: DispatcherSettings, *, orders: int,
              dispatchers: int) -> Throughput:
    """Run ``orders`` orders through ``dispatchers`` processes; the figures."""
    mark = settle(session)
    with monitor(dsn, session) as mon:
        with Dispatchers(dsn, dispatchers, settings, mon) as procs, \
                NotifyCounter(dsn) as notifications:
            before = Counters.read(session)
            cpu_before = procs.cpu_s()
            mon.transactions = 0
            mon.run("insert_orders", {"count": orders})
            start = mon.value("clock")

            def delivered() -> int:
                procs.sample_connections()
                return int(mon.value("delivered", mark))

            wait_until(reached(delivered, orders), what="sustained run",
                       alive=procs.check_alive)
            wait_until(lambda: drained(mon), what="sustained run's last events",
                       alive=procs.check_alive)
            peak_rss_mb = procs.peak_rss_mb()
            cpu_s = _difference(procs.cpu_s(), cpu_before)
            procs.stop()
            notifies = notifications.count
        own = mon.transactions
    # The run's finished events leave the queue for the history inside the measured window:
    # the archive's copy is part of what a transition costs, though the dispatchers' own
    # retention chore makes it only some seconds after the run.
    session.run("archive_finished")
    after = Counters.read(session)
    row = session.run("throughput", {"start": start, **mark})[0]
    return Throughput(
        dispatchers=dispatchers, orders=orders, transitions=int(row["transitions"]),
        seconds=float(row["seconds"] or 0.0), commits=after.commits - before.commits - own,
        notifies=notifies, wal_bytes=after.wal_lsn - before.wal_lsn,
        connections_per_dispatcher=procs.connections_per_dispatcher,
        peak_rss_mb=peak_rss_mb, cpu_s=cpu_s)


def as_dict(t: Throughput, ceiling_per_s: float) -> dict[str, Any]:
    ratio = t.transitions_per_s / ceiling_per_s if ceiling_per_s else 0.0
    return {
        "dispatchers": t.dispatchers, "orders": t.orders, "transitions": t.transitions,
        "seconds": round(t.seconds, 3), "transitions_per_s": round(t.transitions_per_s, 1),
        "ratio_to_ceiling": round(ratio, 3),
    }


def _difference(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def _lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)
