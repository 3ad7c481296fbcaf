"""The long run: many transitions through one dispatcher with a short retention, measured per
tenth of the run, to show whether the engine keeps its pace as finished events pile up.

Orders are fed in a closed loop (a window of open orders is kept full until all are placed),
so the dispatcher never runs dry and the queue never holds the whole run. At the end of each
tenth (by orders delivered) the bench notes the tenth's transitions/s, the size on disk of the
queue (``orchestrator.events``, indexes and TOAST included) and of the history (every
partition), the queue's dead tuples (the statistics collector's count), and how long one prune
of the history takes (the bench's own call, as the dispatchers' chore makes it; it waits for
an archive turn under way to end). The dispatcher archives and prunes as it always does, with
the run's retention.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.bench.case import drained, monitor, settle, wait_until
from orchestrator.bench.db import Session
from orchestrator.bench.dispatchers import Dispatchers, DispatcherSettings
from orchestrator.bench.workflow import TRANSITIONS_PER_ORDER
from orchestrator.config import parse_duration

TENTHS = 10
FEED_POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class LongRunConfig:
    """How long the run is, and with which retention the dispatcher runs."""

    transitions: int = 1_000_000
    retention: str = "1h"
    """The dispatcher's retention (ORCHESTRATOR_RETENTION): history partitions are an hour
    wide below two days, and prune drops whole hours."""
    window: int = 2000
    """Orders kept open (placed, not delivered) while the run feeds them."""


@dataclass(frozen=True, slots=True)
class Tenth:
    """The figures at the end of one tenth of the run."""

    tenth: int
    transitions_per_s: float
    hot_bytes: int
    history_bytes: int
    dead_tuples: int
    live_tuples: int
    prune_ms: float
    pruned_events: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenth": self.tenth, "transitions_per_s": round(self.transitions_per_s, 1),
            "hot_mb": round(self.hot_bytes / 2**20, 1),
            "history_mb": round(self.history_bytes / 2**20, 1),
            "dead_tuples": self.dead_tuples, "live_tuples": self.live_tuples,
            "prune_ms": round(self.prune_ms, 1), "pruned_events": self.pruned_events,
        }


@dataclass(slots=True)
class LongRun:
    transitions: int
    seconds: float
    tenths: list[Tenth] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        first, last = self.tenths[0], self.tenths[-1]
        hot = [t.hot_bytes for t in self.tenths]
        half = len(hot) // 2
        return {
            "transitions": self.transitions, "seconds": round(self.seconds, 1),
            "transitions_per_s": round(self.transitions / self.seconds, 1),
            "last_to_first_tenth": round(
                last.transitions_per_s / max(first.transitions_per_s, 1e-9), 3),
            "hot_growth_second_half": round(max(hot[half:]) / max(hot[half - 1], 1), 3),
            "tenths": [t.as_dict() for t in self.tenths],
        }


class Feed:
    """Places orders in a closed loop and counts those delivered (orders after ``mark``)."""

    def __init__(self, mon: Session, mark: int, orders: int, window: int) -> None:
        self._mon = mon
        self._low = mark  # every order up to here is delivered
        self._mark = mark
        self._orders = orders
        self._window = window
        self.placed = 0

    def delivered(self) -> int:
        """Orders delivered so far; tops the window up first."""
        row = self._mon.run("long_run_progress", {"low": self._low})[0]
        done = self._low - self._mark + int(row["delivered"])
        more = min(self._window - (self.placed - done), self._orders - self.placed)
        if more > 0:
            self._mon.run("insert_orders", {"count": more})
            self.placed += more
        first_open = row["first_open"]
        self._low = int(first_open) - 1 if first_open is not None else int(row["top"])
        return done


def run(session: Session, dsn: str, settings: DispatcherSettings, config: LongRunConfig,
        say: Callable[[str], None]) -> LongRun:
    """Push ``config.transitions`` through one dispatcher; the figures of each tenth."""
    mark = settle(session)
    orders = math.ceil(config.transitions / TRANSITIONS_PER_ORDER)
    env = {"ORCHESTRATOR_RETENTION": config.retention}
    with monitor(dsn, session) as mon, Dispatchers(dsn, 1, settings, mon, env=env) as running:
        feed = Feed(mon, mark["orders"], orders, config.window)
        begin = since = time.monotonic()
        result = LongRun(orders * TRANSITIONS_PER_ORDER, 0.0)
        done_before = feed.delivered()
        for tenth in range(1, TENTHS + 1):
            target = math.ceil(orders * tenth / TENTHS)
            while (done := feed.delivered()) < target:
                running.check_alive()  # else a dispatcher gone would leave this waiting
                time.sleep(FEED_POLL_S)
            now = time.monotonic()
            rate = (done - done_before) * TRANSITIONS_PER_ORDER / (now - since)
            since, done_before = now, done  # the next tenth includes the measuring
            result.tenths.append(_measure(session, tenth, rate, config.retention))
            say(_line(result.tenths[-1]))
        result.seconds = time.monotonic() - begin
        wait_until(lambda: drained(mon), what="long run's last events",
                   alive=running.check_alive)
    return result


def _measure(session: Session, tenth: int, rate: float, retention: str) -> Tenth:
    sizes = session.run("long_run_sizes")[0]
    began = time.monotonic()
    pruned = session.run("long_run_prune", {"retention": parse_duration(retention)})
    prune_ms = (time.monotonic() - began) * 1000
    return Tenth(tenth, rate, int(sizes["hot_bytes"]), int(sizes["history_bytes"]),
                 int(sizes["dead_tuples"] or 0), int(sizes["live_tuples"] or 0), prune_ms,
                 int(pruned[0]["events"]) if pruned else 0)


def _line(t: Tenth) -> str:
    return (f"long run, tenth {t.tenth}: {t.transitions_per_s:.0f} transitions/s, queue "
            f"{t.hot_bytes / 2**20:.1f} MB ({t.dead_tuples} dead tuples), history "
            f"{t.history_bytes / 2**20:.1f} MB, prune {t.prune_ms:.0f} ms")
