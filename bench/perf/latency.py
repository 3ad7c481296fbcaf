"""Latency: from the commit that creates an event to its handler starting, and to its
handler's write-back being committed (unloaded cases only).

The bench places an order in a transaction of its own and notes the time its commit returned;
the order's first handler notes (in the row) when it started, and in the unloaded cases a
trigger of the bench's own notifies when that handler's write-back commits (its arrival is
timed; a NOTIFY at every commit would serialize the paced cases' commits). All are wall-clock
times on the same machine. Unloaded: one order at a time, each run to the end before the next.
Paced: orders placed on a fixed schedule (open loop: a late insert does not delay the next) at
a chosen fraction of the sustained rate.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from orchestrator.bench.case import drained, monitor, reached, settle, wait_until
from orchestrator.bench.db import Arrivals, BenchError, Session
from orchestrator.bench.dispatchers import Dispatchers, DispatcherSettings
from orchestrator.bench.workflow import TRANSITIONS_PER_ORDER


@dataclass(frozen=True, slots=True)
class Latency:
    """Latencies of one case in milliseconds, and the load it ran under (transitions/s):
    commit to handler start (``samples_ms``) and commit to write-back committed
    (``written_ms``)."""

    samples_ms: list[float] = field(repr=False)
    load_transitions_per_s: float
    written_ms: list[float] = field(repr=False, default_factory=list)
    concurrency: int | None = None

    def percentile_ms(self, q: float, samples: list[float] | None = None) -> float:
        """Nearest-rank percentile (q in 0..100) of commit to start, or of ``samples``."""
        ordered = sorted(self.samples_ms if samples is None else samples)
        if not ordered:
            return 0.0
        rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
        return ordered[rank - 1]

    def as_dict(self) -> dict[str, Any]:
        figures = {
            "p50_ms": round(self.percentile_ms(50), 2),
            "p95_ms": round(self.percentile_ms(95), 2),
            "p99_ms": round(self.percentile_ms(99), 2),
            "max_ms": round(max(self.samples_ms, default=0.0), 2),
            "samples": len(self.samples_ms),
            "load_transitions_per_s": round(self.load_transitions_per_s, 1),
        }
        if self.written_ms:
            figures |= {f"written_p{q}_ms": round(self.percentile_ms(q, self.written_ms), 2)
                        for q in (50, 95, 99)}
        return figures | ({"concurrency": self.concurrency} if self.concurrency else {})


def unloaded(session: Session, dsn: str, settings: DispatcherSettings, *,
             orders: int) -> Latency:
    """``orders`` orders one at a time, each delivered before the next is placed."""
    settle(session)
    committed: dict[int, float] = {}
    with (writes(session, dsn) as written, monitor(dsn, session) as mon,
          Dispatchers(dsn, 1, settings, mon)):
        started = time.monotonic()
        for _ in range(orders):
            order = int(mon.value("insert_order"))
            committed[order] = time.time()
            while mon.value("order_status", {"id": order}) != "delivered":
                time.sleep(0.002)
        elapsed = time.monotonic() - started
    load = len(committed) * TRANSITIONS_PER_ORDER / elapsed
    return _latency(session, committed, written, load, settings.concurrency)


def paced(session: Session, dsn: str, settings: DispatcherSettings, *,
          transitions_per_s: float, seconds: float) -> Latency:
    """Orders placed for ``seconds`` at a pace that asks for ``transitions_per_s``."""
    mark = settle(session)
    interval_s = TRANSITIONS_PER_ORDER / max(transitions_per_s, 1.0)
    committed: dict[int, float] = {}
    with monitor(dsn, session) as mon, Dispatchers(dsn, 1, settings, mon) as running:
        begin = time.monotonic()
        n = 0
        while (due := begin + n * interval_s) < begin + seconds:
            if (wait_s := due - time.monotonic()) > 0:
                time.sleep(wait_s)
            order = int(mon.value("insert_order"))
            committed[order] = time.time()
            n += 1
        wait_until(reached(lambda: int(mon.value("delivered", mark)), n), what="paced run",
                   alive=running.check_alive)
        wait_until(lambda: drained(mon), what="paced run's last events",
                   alive=running.check_alive)
    return _latency(session, committed, None, n * TRANSITIONS_PER_ORDER / seconds)


@contextmanager
def writes(session: Session, dsn: str) -> Iterator[Arrivals]:
    """While it is open, when each order's first write-back committed (see watch_writes)."""
    session.run("watch_writes")
    try:
        with Arrivals(dsn, "orchestrator_bench_written") as arrivals:
            yield arrivals
    finally:
        session.run("unwatch_writes")


def _latency(session: Session, committed: dict[int, float], written: Arrivals | None,
             load: float, concurrency: int | None = None) -> Latency:
    rows = session.run("handler_starts", {"ids": list(committed)})
    starts = {int(r["id"]): r["handler_started_s"] for r in rows}
    if len(starts) != len(committed) or None in starts.values():
        raise BenchError("latency: some orders have no recorded handler start")
    samples = [(starts[order] - at) * 1000 for order, at in committed.items()]
    if written is None:
        return Latency(samples, load)
    if missing := [order for order in committed if str(order) not in written.at]:
        raise BenchError(f"latency: {len(missing)} orders' write-backs were not seen to commit")
    done = [(written.at[str(order)] - at) * 1000 for order, at in committed.items()]
    return Latency(samples, load, done, concurrency)
