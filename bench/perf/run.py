"""One bench run: prepare the database, measure each case in turn, return every figure.

The order matters: rounds of sustained throughput with 1, 2, 4... dispatchers, each followed by
the ceiling on 1, 2, 4, 8 and 16 connections (rounds interleaved, so that background load on a
shared machine weighs on both alike); then latency at fractions of the one-dispatcher rate;
then the backlog drain.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from orchestrator.app import Orchestrator
from orchestrator.bench import backlog, ceiling, latency, longrun, remote, throughput
from orchestrator.bench.db import Session
from orchestrator.bench.dispatchers import DispatcherSettings
from orchestrator.config import Settings
from orchestrator.registry import load_registry

SERVER_SETTINGS = [
    "max_connections", "shared_buffers", "synchronous_commit", "fsync", "wal_sync_method",
    "wal_level", "full_page_writes", "checkpoint_timeout", "max_wal_size", "autovacuum",
    "autovacuum_naptime", "work_mem", "jit",
]


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """How big each case is, and the engine settings of every dispatcher."""

    orders: int = 3000
    """Orders per sustained run (six transitions each)."""
    backlog_events: int = 100_000
    """Pending events created before the drain starts."""
    unloaded_orders: int = 200
    """Orders placed one at a time for the unloaded latency."""
    idle_concurrency: tuple[int, ...] = (8, 64)
    """The unloaded latency is measured with a dispatcher of each of these concurrencies."""
    paced_s: float = 5.0
    """Seconds each paced latency case places orders for."""
    load_fractions: tuple[float, ...] = (0.5, 0.8)
    """Paced latency cases, as fractions of the one-dispatcher sustained rate."""
    dispatcher_counts: tuple[int, ...] = (1, 2, 4)
    """Dispatcher processes per sustained run (the scaling case); the first is the reference."""
    ceiling_s: float = 5.0
    """Seconds each pgbench run lasts."""
    ceiling_connections: tuple[int, ...] = (1, 2, 4, 8, 16)
    """Connection counts the ceiling is measured at in each round; the best one counts."""
    repeat: int = 3
    """Rounds of sustained runs and ceiling (figures are their medians)."""
    concurrency: int = 256
    """Handlers a dispatcher runs at once: with handlers that return at once, also the most
    results one group commit writes and the most events one claim takes."""
    pool_size: int = 4
    batch_size: int = 64
    remote: remote.RemoteConfig | None = None
    """The remote-handler case, when asked for (``--remote-latency-ms``)."""
    remote_only: bool = False
    """Run the remote-handler case alone."""
    long_run: longrun.LongRunConfig | None = None
    """Run the long-run case alone (``--long-run``)."""

    @property
    def dispatcher(self) -> DispatcherSettings:
        return DispatcherSettings(self.concurrency, self.pool_size, self.batch_size)


def prepare(dsn: str) -> None:
    """Create the bench's tables, migrate, and install the bench workflows."""
    with Session(dsn) as session:
        session.run("create_tables")
    registry = load_registry("orchestrator.bench.workflow")
    with Orchestrator(Settings.load(env={}, dsn=dsn), registry) as orch:
        orch.migrate()


@dataclass(frozen=True, slots=True)
class Ceiling:
    """The yardstick: pgbench's single-row UPDATE transactions/s, per round and connection
    count. The ceiling is the best of them all: the server's best rate at any number of
    connections, and other load on the machine only ever lowers it, so a high ceiling is the
    conservative choice for the ratio. ``dispatcher_connections``: as many as one dispatcher
    held (the yardstick before it was fair), for comparison."""

    rounds: list[dict[int, float]]
    dispatcher_connections: int
    notify_updates_per_s: float

    @property
    def updates_per_s(self) -> float:
        return max(self.by_connections.values())

    @property
    def connections(self) -> int:
        """The connection count of the best figure."""
        best = self.by_connections
        return max(best, key=lambda n: best[n])

    @property
    def by_connections(self) -> dict[int, float]:
        """The best round at each connection count."""
        counts = sorted({n for r in self.rounds for n in r})
        return {n: max(r.get(n, 0.0) for r in self.rounds) for n in counts}


def run(config: BenchConfig, dsn: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Every case of the bench on the database at ``dsn``; the figures (see the README)."""
    prepare(dsn)
    settings = config.dispatcher
    if config.long_run:
        with Session(dsn) as session:
            return {"environment": environment(session), "long_run": longrun.run(
                session, dsn, settings, config.long_run, say).as_dict()}
    if config.remote_only and config.remote:
        with Session(dsn) as session:
            return {"environment": environment(session),
                    "remote": remote.run(config.remote, session, dsn, settings, say)}
    with Session(dsn) as session, ceiling.table(session):
        env = environment(session)
        runs, top = _throughput_rounds(config, session, dsn, say)
        reference = _median_run(runs[config.dispatcher_counts[0]])
        cases = {}
        for count in config.idle_concurrency:
            say(f"latency: {config.unloaded_orders} orders one at a time, concurrency {count}")
            cases[f"unloaded_c{count}"] = latency.unloaded(
                session, dsn, replace(settings, concurrency=count),
                orders=config.unloaded_orders)
        for fraction in config.load_fractions:
            say(f"latency: {config.paced_s:g}s at {fraction:.0%} of the sustained rate")
            cases[_load_name(fraction)] = latency.paced(
                session, dsn, settings, seconds=config.paced_s,
                transitions_per_s=fraction * reference.transitions_per_s)
        say(f"backlog: {config.backlog_events} events, then one dispatcher")
        drained = backlog.drain(session, dsn, settings, events=config.backlog_events)
        say(f"backlog: {config.backlog_events} events with related data, then one dispatcher")
        related = backlog.drain(session, dsn, settings, events=config.backlog_events,
                                related=True)
        remote_figures = (remote.run(config.remote, session, dsn, settings, say)
                          if config.remote else None)
    figures = results(config, env, top, runs, cases, drained, related)
    return figures | ({"remote": remote_figures} if remote_figures else {})


def _throughput_rounds(
    config: BenchConfig, session: Session, dsn: str, say: Callable[[str], None]
) -> tuple[dict[int, list[throughput.Throughput]], Ceiling]:
    """``repeat`` rounds, each a sustained run per dispatcher count and the ceiling at each
    connection count right after, so background load on a shared machine weighs on both
    alike; then the ceiling with NOTIFY at the best connection count, once."""
    runs: dict[int, list[throughput.Throughput]] = {n: [] for n in config.dispatcher_counts}
    rounds: list[dict[int, float]] = []
    used = config.pool_size + 1
    counts = sorted({*config.ceiling_connections, config.pool_size})
    for round_ in range(1, config.repeat + 1):
        for count in config.dispatcher_counts:
            say(f"round {round_}: sustained, {config.orders} orders, {count} dispatcher(s)")
            runs[count].append(throughput.sustained(
                session, dsn, config.dispatcher, orders=config.orders, dispatchers=count))
        used = runs[config.dispatcher_counts[0]][0].connections_per_dispatcher or used
        say(f"round {round_}: ceiling, pgbench on {', '.join(map(str, counts))} connections")
        rounds.append({n: ceiling.updates_per_s(dsn, connections=n, seconds=config.ceiling_s)
                       for n in sorted({*counts, used})})
    top = Ceiling(rounds, used, 0.0)
    say(f"ceiling with pg_notify on {top.connections} connections")
    notify = ceiling.updates_per_s(dsn, connections=top.connections, seconds=config.ceiling_s,
                                   notify=True)
    return runs, Ceiling(rounds, used, notify)


def _median_run(runs: list[throughput.Throughput]) -> throughput.Throughput:
    return sorted(runs, key=lambda r: r.transitions_per_s)[len(runs) // 2]


def results(config: BenchConfig, env: dict[str, Any], top: Ceiling,
            runs: dict[int, list[throughput.Throughput]], cases: dict[str, latency.Latency],
            drained: backlog.Backlog, related: backlog.Backlog) -> dict[str, Any]:
    """The JSON document: the headline keys at the top level, then each case's details.
    Throughput figures are the median of the rounds, the ceiling the best round (each
    round's figure is listed too)."""
    ref = _median_run(runs[config.dispatcher_counts[0]])
    everyone = [r for series in runs.values() for r in series]
    return {
        "ceiling_updates_per_s": round(top.updates_per_s, 1),
        "ceiling_notify_updates_per_s": round(top.notify_updates_per_s, 1),
        "ceiling_connections": top.connections,
        "ceiling_by_connections": {str(n): round(v, 1) for n, v in top.by_connections.items()},
        "ceiling_updates_per_s_at_pool_size": round(
            top.by_connections.get(config.pool_size, 0.0), 1),
        "ceiling_dispatcher_connections": top.dispatcher_connections,
        "ceiling_updates_per_s_at_dispatcher_connections": round(
            top.by_connections.get(top.dispatcher_connections, 0.0), 1),
        "ceiling_rounds": [round(max(r.values()), 1) for r in top.rounds],
        "ceiling_rounds_by_connections": [{str(n): round(v, 1) for n, v in r.items()}
                                          for r in top.rounds],
        "transitions_per_s": round(ref.transitions_per_s, 1),
        "ratio_to_ceiling": round(ref.transitions_per_s / top.updates_per_s, 3),
        "sustained": throughput.as_dict(ref, top.updates_per_s),
        "latency": {name: case.as_dict() for name, case in cases.items()},
        "backlog": drained.as_dict(),
        "backlog_events_per_s": round(drained.events_per_s, 1),
        "backlog_related": related.as_dict(),
        "backlog_related_events_per_s": round(related.events_per_s, 1),
        "scaling": [_scaling(series, top) for series in runs.values()],
        "costs": {
            "notifies_per_transition": round(ref.per_transition(ref.notifies), 4),
            "commits_per_transition": round(ref.per_transition(ref.commits), 4),
            "wal_bytes_per_transition": round(ref.per_transition(ref.wal_bytes)),
            "connections_per_dispatcher": max(r.connections_per_dispatcher for r in everyone),
            "dispatcher_cpu_us_per_transition": round(ref.per_transition(ref.cpu_s or 0.0) * 1e6),
            "pool_size": config.pool_size,
            "dispatcher_peak_rss_mb": round(max(
                (r.peak_rss_mb for r in everyone if r.peak_rss_mb is not None), default=0.0), 1),
        },
        "settings": {"concurrency": config.concurrency, "pool_size": config.pool_size,
                     "batch_size": config.batch_size, "orders": config.orders,
                     "repeat": config.repeat},
        "environment": env,
    }


def _scaling(series: list[throughput.Throughput], top: Ceiling) -> dict[str, Any]:
    return throughput.as_dict(_median_run(series), top.updates_per_s) | {
        "rounds_transitions_per_s": [round(r.transitions_per_s, 1) for r in series]}


def environment(session: Session) -> dict[str, Any]:
    """The server's version and settings, the machine's cores, and the date."""
    server = session.run("server")[0]
    settings = {r["name"]: r["setting"] + (r["unit"] or "")
                for r in session.run("settings", {"names": SERVER_SETTINGS})}
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(), "machine": platform.machine(), "os": platform.platform(),
        "python": platform.python_version(), "server_version": server["version"],
        "server": server["full_version"], "server_settings": settings,
    }


def _load_name(fraction: float) -> str:
    return "half_load" if fraction == 0.5 else f"load_{round(fraction * 100)}"
