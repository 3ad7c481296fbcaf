"""The dashboard's live figures, sampled from the database on a timer of their own.

Every ``every_s`` a sample reads, per workflow: rows per state, rows stuck past the threshold,
the backlog (due, waiting for a retry, timers, running, dead, oldest due age) and the events
finished over the last minute (throughput, commit-to-claim lag). Pages read the last sample, so
any number of open pages cost the database the same. Finished events are counted from an id
floor (the lowest id still open at an earlier sample), so a sample never scans the history.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from orchestrator import admin
from orchestrator.errors import OrchestratorError
from orchestrator.reports import Reports
from orchestrator.workflow import Workflow

log = logging.getLogger(__name__)

WINDOW_S = 60.0      # throughput and lag are over the last minute
SERIES_LENGTH = 150  # throughput points kept per workflow (five minutes at 2 s)
# Ids are taken when an event is inserted and seen when it commits: one a little below the
# lowest open id may still commit after a sample. The margin keeps it in the next count.
FLOOR_MARGIN = 1000


@dataclass(frozen=True, slots=True)
class Mark:
    """Where a sample stood: the database's time and the id floor for later counts."""

    at: datetime
    floor: int


@dataclass
class Pulse:
    """Samples on a daemon thread between ``start`` and ``stop``; ``snapshot`` is the latest
    overview (the shape of ``GET /api/overview``)."""

    store: Reports
    stuck_after_s: float
    every_s: float = 2.0
    _marks: deque[Mark] = field(default_factory=lambda: deque(maxlen=SERIES_LENGTH))
    _series: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    _snapshot: dict[str, Any] = field(default_factory=lambda: {"workflows": [], "at": None})
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Take a first sample (so that no page ever sees an empty overview), then sample on
        a thread of its own."""
        self._sample_or_report()
        self._thread = threading.Thread(target=self._run, name="dashboard-pulse", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._snapshot

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample_or_report()

    def _sample_or_report(self) -> None:
        try:
            self.sample()
        except OrchestratorError as exc:
            log.warning("dashboard: cannot read the database: %s", exc)
            with self._lock:
                self._snapshot = self._snapshot | {"error": str(exc)}
        except Exception:  # a bug here must not stop the figures for good
            log.exception("dashboard: sampling failed")

    def sample(self) -> None:
        """Read one sample (raises OrchestratorError when the database cannot be read)."""
        now, max_id = self.store.event_horizon()
        backlog = admin.backlog(self.store)
        finished = self._finished(now)
        open_ids = [b["min_open_id"] for b in backlog.values() if b["min_open_id"] is not None]
        floor = min([*open_ids, max_id + 1]) - FLOOR_MARGIN
        workflows = [self._workflow(wf, backlog, finished, now)
                     for wf in admin.workflows(self.store).values()]
        self._marks.append(Mark(now, max(floor, 0)))
        with self._lock:
            self._snapshot = {"at": now.isoformat(), "stuck_after_s": self.stuck_after_s,
                              "window_s": WINDOW_S, "workflows": workflows,
                              "limits": admin.limits(self.store)}

    def _finished(self, now: datetime) -> Finished | None:
        """Events finished in the window and since the last sample; None before the first
        sample (there is no floor yet)."""
        if not self._marks:
            return None
        start = now - timedelta(seconds=WINDOW_S)
        mark = next((m for m in reversed(self._marks) if m.at <= start), self._marks[0])
        since = max(start, self._marks[0].at)
        rows = self.store.recent_finished(floor=mark.floor, since=since,
                                          last=self._marks[-1].at)
        return Finished({r["workflow"]: r for r in rows}, (now - since).total_seconds(),
                        (now - self._marks[-1].at).total_seconds())

    def _workflow(self, wf: Workflow, backlog: dict[str, dict[str, Any]],
                  finished: Finished | None, now: datetime) -> dict[str, Any]:
        active = [s for s in wf.states if s not in wf.terminal]
        counts = self.store.state_counts(wf)
        stuck = self.store.stuck_counts(wf, active, self.stuck_after_s)
        mine = backlog.get(wf.name, {})
        events = {k: mine.get(k, 0) for k in admin.BACKLOG_FIELDS}
        events["oldest_due_age_s"] = mine.get("oldest_due_age_s")
        return {"name": wf.name, "table": wf.qualified_table,
                "states": {s: counts.get(s, 0) for s in wf.states},
                "stuck": {s: stuck.get(s, 0) for s in active},
                "events": events, **self._rates(wf.name, finished, now)}

    def _rates(self, name: str, finished: Finished | None, now: datetime) -> dict[str, Any]:
        if finished is None:
            return {"throughput_per_s": None, "lag": None, "series": []}
        mine = finished.rows.get(name, {})
        series = self._series.setdefault(name, deque(maxlen=SERIES_LENGTH))
        if finished.step_s > 0:
            series.append((now.timestamp() * 1000,
                           mine.get("finished_since_last", 0) / finished.step_s))
        per_s = mine.get("finished", 0) / finished.span_s if finished.span_s > 0 else None
        lag = ({k: mine[f"lag_{k}_s"] for k in ("p50", "p95", "max")}
               if mine.get("lag_max_s") is not None else None)
        return {"throughput_per_s": per_s, "lag": lag,
                "series": [[round(t), round(v, 2)] for t, v in series]}


@dataclass(frozen=True, slots=True)
class Finished:
    """Events finished per workflow (the ``recent_finished`` rows), over ``span_s`` seconds;
    ``step_s`` since the previous sample."""

    rows: dict[str, dict[str, Any]]
    span_s: float
    step_s: float
