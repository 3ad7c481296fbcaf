"""What every case shares: a clean slate, a monitor session, and waiting for the engine."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from orchestrator.bench.db import BenchError, Session

MONITOR = "orchestrator-bench-monitor"
# The monitor's queries are all index lookups. With the statistics of a table that just grew
# (100,000 backlog events inserted after the ANALYZE), a poll for the oldest pending event was
# planned as a parallel sequential scan of the whole events table, 70-230 ms every 50 ms, on
# cores the engine needs.
MONITOR_OPTIONS = "-c enable_seqscan=off -c max_parallel_workers_per_gather=0"
POLL_S = 0.05


def settle(session: Session) -> dict[str, int]:
    """Vacuum and analyze (as autovacuum would in a quiet moment) so each case starts alike;
    the watermark: the case counts only events and orders with larger ids."""
    session.run("vacuum")
    return {k: int(v) for k, v in session.run("watermark")[0].items()}


@contextmanager
def monitor(dsn: str, session: Session) -> Iterator[Session]:
    """A session of its own for the work a case does while measuring; on exit it is closed
    and gone from the server, so the commit counter includes (exactly) its transactions."""
    mon = Session(dsn, name=MONITOR, options=MONITOR_OPTIONS)
    try:
        yield mon
    finally:
        mon.close()
        deadline = time.monotonic() + 10
        while session.value("sessions_named", {"name": MONITOR}) and time.monotonic() < deadline:
            time.sleep(0.01)


def wait_until(progress: Callable[[], tuple[bool, object]], *, what: str,
               stall_s: float = 30.0, poll_s: float = POLL_S,
               alive: Callable[[], None] | None = None) -> None:
    """Poll ``progress`` (finished, where it stands) until finished; ``alive``, each poll
    before it, raises when what does the work is gone (a dispatcher exited). Raises BenchError
    when where it stands does not change for ``stall_s`` seconds."""
    last, moved_at = None, time.monotonic()
    while True:
        if alive is not None:
            alive()
        finished, marker = progress()
        if finished:
            return
        now = time.monotonic()
        if marker != last:
            last, moved_at = marker, now
        elif now - moved_at > stall_s:
            raise BenchError(f"{what}: stuck at {marker} for {stall_s:.0f}s")
        time.sleep(poll_s)


def reached(count: Callable[[], int], wanted: int) -> Callable[[], tuple[bool, object]]:
    """Progress for wait_until: ``count()`` reaching ``wanted``."""
    def progress() -> tuple[bool, object]:
        n = count()
        return n >= wanted, f"{n} of {wanted}"
    return progress


def drained(mon: Session) -> tuple[bool, object]:
    """Progress for wait_until: no event of the bench pending or running."""
    row = mon.run("open_events")[0]
    return row["pending"] is None and not row["running"], (row["pending"], row["running"])
