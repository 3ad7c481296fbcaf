"""Prometheus metrics of one dispatcher, served on ``--metrics-port`` at ``/metrics``.

Counters and histograms are updated as the dispatcher works (an increment, nothing more). The
figures that live in the database (backlog, rows per state) are read when Prometheus scrapes,
at most once per ``cache_s``, never on the hot path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from orchestrator import admin
from orchestrator.credentials import WatchedProvider
from orchestrator.db import Listener
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.events import Event
from orchestrator.observe import Observer
from orchestrator.outcomes import Outcome, Result
from orchestrator.registry import Registry
from orchestrator.reports import Reports
from orchestrator.runner import DEADLINE_HANDLER
from orchestrator.workflow import Workflow

log = logging.getLogger(__name__)

NO_HANDLER = "none"
DURATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                      10.0, 30.0, 60.0, 300.0)
LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                 30.0, 60.0, 300.0, 900.0)
PENDING_KINDS = {"due": "due", "retry": "waiting", "timer": "timers"}


class Metrics(Observer):
    """A dispatcher's metrics in a registry of their own; ``serve`` exposes them over HTTP."""

    def __init__(self, registry: Registry, store: Reports, *, cache_s: float = 5.0,
                 pool_stats: Callable[[], dict[str, int]] | None = None,
                 password: WatchedProvider | None = None) -> None:
        self._handlers = registry
        self.registry = CollectorRegistry()
        self._listener: Listener | None = None
        by_handler = ["workflow", "handler"]
        self.events_claimed = Counter(
            "orchestrator_events_claimed", "Events this dispatcher took to run (claimed, handed "
            "over from a write, or deadlines come due).", by_handler, registry=self.registry)
        self.events_done = Counter(
            "orchestrator_events_done", "Events finished: applied (the row moved), noop, stale "
            "or no_handler.", [*by_handler, "outcome"], registry=self.registry)
        self.events_retried = Counter(
            "orchestrator_events_retried", "Failed attempts put back in the queue.", by_handler,
            registry=self.registry)
        self.events_dead = Counter(
            "orchestrator_events_dead", "Events that ran out of attempts (or failed for good).",
            by_handler, registry=self.registry)
        self.handler_duration = Histogram(
            "orchestrator_handler_duration_seconds", "How long handlers ran (returned or raised; "
            "timeouts are counted as retried or dead).", by_handler,
            buckets=DURATION_BUCKETS_S, registry=self.registry)
        self.event_lag = Histogram(
            "orchestrator_event_lag_seconds", "From the row change that recorded an event to its "
            "handler's start, first attempts only.", ["workflow"], buckets=LAG_BUCKETS_S,
            registry=self.registry)
        self.events_waited = Counter(
            "orchestrator_events_waited", "Claims this dispatcher put back to wait for a turn "
            "of their handler's fleet-wide limit (no attempt used).", ["limit"],
            registry=self.registry)
        self.registry.register(DatabaseGauges(store, list(registry.workflows.values()), cache_s))
        self.registry.register(ListenerGauges(lambda: self._listener))
        if pool_stats is not None:
            self.registry.register(ConnectionGauges(pool_stats, password))
        self._server: Any = None

    # -- the observer hooks (the hot path: increments only) -----------------------------------

    def claimed(self, events: Sequence[Event]) -> None:
        for event in events:
            self.events_claimed.labels(event.workflow, self._handler_of(event)).inc()

    def started(self, event: Event, handler: str) -> None:
        if event.attempt == 1:
            lag_s = time.time() - event.created_at.astimezone(UTC).timestamp()
            self.event_lag.labels(event.workflow).observe(max(0.0, lag_s))

    def ran(self, event: Event, handler: str, duration_s: float) -> None:
        self.handler_duration.labels(event.workflow, handler).observe(duration_s)

    def waited(self, limit: str, count: int) -> None:
        self.events_waited.labels(limit).inc(count)

    def finished(self, result: Result, outcome: Outcome | None) -> None:
        labels = (result.event.workflow, result.handler or NO_HANDLER)
        if outcome is Outcome.RETRY:
            self.events_retried.labels(*labels).inc()
        elif outcome is Outcome.DEAD:
            self.events_dead.labels(*labels).inc()
        elif outcome is not None:
            self.events_done.labels(*labels, outcome.value).inc()

    def _handler_of(self, event: Event) -> str:
        if event.op == "TIMER":
            return DEADLINE_HANDLER
        spec = self._handlers.route(event)
        return spec.name if spec else NO_HANDLER

    # -- serving ---------------------------------------------------------------------------

    def watch(self, listener: Listener | None) -> None:
        """Report on this LISTEN connection (up or down, reconnects)."""
        self._listener = listener

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on a daemon thread; the port bound. Raises ConfigError when the
        address cannot be bound."""
        try:
            self._server, _ = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
        bound: int = self._server.server_port
        log.info("Prometheus metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class DatabaseGauges(Collector):
    """Backlog, dead events and rows per state, read from the database when scraped (at most
    once per ``cache_s``; scrapes in between get the figures last read). When the database
    cannot be read, ``orchestrator_database_up`` is 0 and these gauges are left out."""

    def __init__(self, store: Reports, workflows: Sequence[Workflow], cache_s: float) -> None:
        self._store = store
        self._workflows = workflows
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._figures: dict[str, Any] | None = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._read_at >= self._cache_s:
                self._figures = self._read()
                self._read_at = time.monotonic()
            figures = self._figures
        up = GaugeMetricFamily("orchestrator_database_up", "Whether the database could be read "
                               "for the gauges below at the last scrape.")
        up.add_metric([], 0 if figures is None else 1)
        yield up
        if figures is not None:
            yield from _database_families(figures)

    def _read(self) -> dict[str, Any] | None:
        try:
            return {"backlog": admin.backlog(self._store),
                    "rows": {wf.name: self._store.state_counts(wf) for wf in self._workflows},
                    "states": {wf.name: wf.states for wf in self._workflows},
                    "limits": admin.limits(self._store)}
        except OrchestratorError as exc:
            log.warning("metrics: cannot read the database: %s", exc)
            return None


def _database_families(figures: dict[str, Any]) -> Iterator[Metric]:
    pending = GaugeMetricFamily(
        "orchestrator_events_pending", "Pending events by kind: due (the backlog: runnable, not "
        "yet taken), retry (waiting for a retry), timer (deadlines to come).",
        labels=["workflow", "kind"])
    running = GaugeMetricFamily("orchestrator_events_running", "Events being run now, by any "
                                "dispatcher.", labels=["workflow"])
    dead = GaugeMetricFamily("orchestrator_dead_events", "Dead events in the database (until "
                             "redriven).", labels=["workflow"])
    oldest = GaugeMetricFamily(
        "orchestrator_oldest_pending_age_seconds", "How long the oldest due event has waited "
        "since it became runnable (0 when none is due).", labels=["workflow"])
    rows = GaugeMetricFamily("orchestrator_rows", "Rows per state.", labels=["workflow", "state"])
    for name, states in figures["states"].items():
        ev = figures["backlog"].get(name, {})
        for kind, key in PENDING_KINDS.items():
            pending.add_metric([name, kind], ev.get(key, 0))
        running.add_metric([name], ev.get("running", 0))
        dead.add_metric([name], ev.get("dead", 0))
        oldest.add_metric([name], ev.get("oldest_due_age_s") or 0.0)
        counts = figures["rows"][name]
        for state in states:
            rows.add_metric([name, state], counts.get(state, 0))
    yield from (pending, running, dead, oldest, rows)
    yield from _limit_families(figures["limits"])


def _limit_families(limits: Sequence[dict[str, Any]]) -> Iterator[Metric]:
    running = GaugeMetricFamily("orchestrator_limit_running", "Runs holding a slot of a "
                                "fleet-wide limit now, by any dispatcher.", labels=["limit"])
    bound = GaugeMetricFamily("orchestrator_limit_max_running", "A fleet-wide limit's most runs "
                              "at once (absent: no such bound).", labels=["limit"])
    waits = CounterMetricFamily("orchestrator_limit_waits", "Times an event was put back to "
                                "wait for a turn of a fleet-wide limit, by any dispatcher.",
                                labels=["limit"])
    for lim in limits:
        running.add_metric([lim["name"]], lim["running"])
        if lim["max_running"]:
            bound.add_metric([lim["name"]], lim["max_running"])
        waits.add_metric([lim["name"]], lim["waits"])
    yield from (running, bound, waits)


class ListenerGauges(Collector):
    """The LISTEN connection: up or down, and how often it reconnected."""

    def __init__(self, listener: Callable[[], Listener | None]) -> None:
        self._listener = listener

    def collect(self) -> Iterator[Metric]:
        listener = self._listener()
        up = GaugeMetricFamily("orchestrator_listen_up", "Whether the LISTEN connection is up.")
        up.add_metric([], 1 if listener is not None and listener.up else 0)
        reconnects = CounterMetricFamily("orchestrator_listen_reconnects", "Times the LISTEN "
                                         "connection was lost and connected again.")
        reconnects.add_metric([], listener.reconnects if listener is not None else 0)
        yield from (up, reconnects)


class ConnectionGauges(Collector):
    """The work pool (psycopg_pool's figures, read when scraped) and the password provider."""

    def __init__(self, pool_stats: Callable[[], dict[str, int]],
                 password: WatchedProvider | None) -> None:
        self._pool_stats = pool_stats
        self._password = password

    def collect(self) -> Iterator[Metric]:
        stats = self._pool_stats()
        size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
        for name, value, text in (
            ("size", size, "Pooled work connections now, open or being opened."),
            ("max", stats.get("pool_max", 0), "Most pooled work connections (pool_size)."),
            ("available", available, "Pooled connections idle, ready to be taken."),
            ("in_use", max(0, size - available), "Pooled connections taken (or being opened "
                                                 "or checked)."),
            ("requests_waiting", stats.get("requests_waiting", 0), "Requests waiting for a "
                                                                   "pooled connection now."),
        ):
            gauge = GaugeMetricFamily(f"orchestrator_pool_{name}", text)
            gauge.add_metric([], value)
            yield gauge
        yield from _pool_counters(stats, self._password)
        if self._password is not None:
            yield from _password_families(self._password)


def _pool_counters(stats: dict[str, int], password: WatchedProvider | None) -> Iterator[Metric]:
    for name, value, text in (
        ("connection_errors", stats.get("connections_errors", 0), "New pooled connections "
         "that failed to connect (refused, unreachable, authentication failed)."),
        ("connections_lost", stats.get("connections_lost", 0) + stats.get("returns_bad", 0),
         "Pooled connections found broken and replaced."),
        ("requests", stats.get("requests_num", 0), "Requests for a pooled connection."),
        ("request_timeouts", stats.get("requests_errors", 0), "Requests that got no pooled "
         "connection in time."),
    ):
        counter = CounterMetricFamily(f"orchestrator_pool_{name}", text)
        counter.add_metric([], value)
        yield counter
    connect = SummaryMetricFamily(
        "orchestrator_pool_connect_seconds", "New pooled connections opened, and the time "
        "their connecting took (TCP, TLS, authentication).")
    connect.add_metric([], count_value=connections_opened(stats, password),
                       sum_value=stats.get("connections_ms", 0) / 1000)
    yield connect


def _password_families(password: WatchedProvider) -> Iterator[Metric]:
    calls = SummaryMetricFamily(
        "orchestrator_password_provider_seconds", "Calls to the password provider (command or "
        "function; one per new connection) and the time they took, failures included.")
    calls.add_metric([], count_value=password.calls, sum_value=password.seconds)
    failures = CounterMetricFamily(
        "orchestrator_password_provider_failures", "Calls to the password provider that "
        "raised or returned no password.")
    failures.add_metric([], password.failures)
    yield from (calls, failures)


def connection_summary(stats: dict[str, int],
                       password: WatchedProvider | None) -> str:
    """One line on the pool's connections (and the password provider's calls) so far."""
    opened = connections_opened(stats, password)
    connect_ms = stats.get("connections_ms", 0) / max(1, opened)
    text = (f"pool opened {opened} (mean {connect_ms:.0f} ms to connect), "
            f"{stats.get('connections_errors', 0)} failed to connect, "
            f"{stats.get('connections_lost', 0)} found broken, "
            f"{stats.get('requests_errors', 0)} requests timed out")
    if password is not None:
        mean_ms = 1000 * password.seconds / max(1, password.calls)
        text += (f"; password provider: {password.calls} calls, {password.failures} failed, "
                 f"mean {mean_ms:.0f} ms")
    return text


def connections_opened(stats: dict[str, int], password: WatchedProvider | None
                       ) -> int:
    """Connections the pool opened. psycopg_pool counts an attempt whose password could not be
    had among its attempts (not its errors): those are taken off, the few of the LISTEN
    connection's and open's direct check with them, so this may fall short by those."""
    failed = password.failures if password is not None else 0
    return max(0, stats.get("connections_num", 0) - stats.get("connections_errors", 0) - failed)
