"""How many connections dispatchers open: pool_size + 1 each, never more; none for LISTEN when
it is off."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from orchestrator.app import Orchestrator
from orchestrator.config import Settings
from orchestrator.db import LISTEN_APPLICATION_NAME
from orchestrator.dispatcher import Stats
from orchestrator.registry import Registry
from tests.conftest import FAST
from tests.support import roles

POOL_SIZE = 3
DISPATCHERS = 2
BUDGET = DISPATCHERS * (POOL_SIZE + 1)


@contextmanager
def peak_connections(dsn: str, users: list[str]) -> Iterator[dict[str, int]]:
    """Samples the sessions of each of ``users`` until the block ends; the peaks, per user
    and in total."""
    peaks: dict[str, int] = {}
    done = threading.Event()

    def sample() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not done.is_set():
                rows = conn.execute("SELECT usename, count(*) FROM pg_stat_activity"
                                    " WHERE usename = ANY(%s) GROUP BY 1", (users,)).fetchall()
                for name, count in [*rows, ("total", sum(c for _, c in rows))]:
                    peaks[name] = max(peaks.get(name, 0), count)
                done.wait(0.01)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        yield peaks
    finally:
        done.set()
        thread.join()


def test_each_dispatcher_opens_at_most_pool_size_plus_one_connections(
        dsn: str, sql: Any, registry: Registry, caplog: pytest.LogCaptureFixture) -> None:
    sql("INSERT INTO jobs (sleep_s) SELECT 0.01 FROM generate_series(1, 120)")
    # Each dispatcher logs in as a role of its own whose CONNECTION LIMIT is the documented
    # budget: the server refuses a connection past it.
    with ExitStack() as stack:
        dsns = [stack.enter_context(roles.dispatcher_role(dsn, connection_limit=POOL_SIZE + 1))
                for _ in range(DISPATCHERS)]
        users = [str(conninfo.conninfo_to_dict(d)["user"]) for d in dsns]
        orchs = [Orchestrator(Settings.load(env={}, dsn=d, pool_size=POOL_SIZE, concurrency=6,
                                            **FAST), registry) for d in dsns]
        with peak_connections(dsn, users) as peaks:
            stats = run_together(orchs)
        errors = [orch.pool.get_stats().get("connections_errors", 0) for orch in orchs]
    assert sql("SELECT status, count(*) FROM jobs GROUP BY 1") == [("finished", 120)]
    assert all(s.applied > 0 for s in stats), "both dispatchers took part"
    assert errors == [0] * DISPATCHERS
    assert "too many connections" not in caplog.text
    assert all(peaks.get(user, 0) <= POOL_SIZE + 1 for user in users), peaks
    assert peaks["total"] <= BUDGET


def run_together(orchs: list[Orchestrator]) -> list[Stats]:
    results: list[Stats] = []
    barrier = threading.Barrier(len(orchs))

    def run(orch: Orchestrator) -> None:
        with orch:
            dispatcher = orch.dispatcher(until_idle=True)
            barrier.wait()
            results.append(dispatcher.run())

    threads = [threading.Thread(target=run, args=(orch,)) for orch in orchs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == len(orchs)
    return results


@pytest.mark.parametrize("listen", [True, False])
def test_listen_takes_one_connection_and_polling_only_takes_none(
        dsn: str, sql: Any, registry: Registry, listen: bool) -> None:
    settings = Settings.load(env={}, dsn=dsn, listen=listen, **FAST)
    with Orchestrator(settings, registry) as orch:
        dispatcher = orch.dispatcher()
        thread = threading.Thread(target=dispatcher.run)
        thread.start()
        try:
            sql("INSERT INTO jobs DEFAULT VALUES")
            wait_for(sql, "SELECT count(*) = 1 FROM jobs WHERE status = 'finished'")
            if listen:
                wait_for(sql, f"SELECT {listeners_query()} = 1")
            listening = sql(f"SELECT {listeners_query()}")[0][0]
        finally:
            dispatcher.stop()
            thread.join()
    assert listening == (1 if listen else 0)


def listeners_query() -> str:
    return ("(SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            f" AND application_name = '{LISTEN_APPLICATION_NAME}')")


def wait_for(sql: Any, query: str, timeout_s: float = 30) -> None:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.02)):
        if sql(query)[0][0]:
            return
        done.wait(0.02)
    raise AssertionError(f"not true within {timeout_s}s: {query}")
