"""The bench's own database access: named queries on a session, and a NOTIFY counter.

The only bench module that imports psycopg. Every session is autocommit and counts the
transactions it runs, so a case can subtract its own from the server's commit counter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Self

import psycopg
from psycopg import conninfo
from psycopg.rows import dict_row

from orchestrator.db import CHANNEL, connect_kwargs, one_line
from orchestrator.errors import OrchestratorError
from orchestrator.sql import load_queries

QUERIES = load_queries("orchestrator.bench")
BENCH_APP = "orchestrator-bench"


class BenchError(OrchestratorError):
    """The benchmark could not complete."""


def with_application_name(dsn: str, name: str) -> str:
    """``dsn`` with its sessions named ``name`` in pg_stat_activity."""
    return conninfo.make_conninfo(dsn, application_name=name)


@contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise BenchError(f"database error: {one_line(exc)}") from exc


class Session:
    """One autocommit connection of the bench; ``transactions`` counts what it ran."""

    def __init__(self, dsn: str, *, name: str = BENCH_APP, options: str | None = None) -> None:
        params = connect_kwargs(dsn, application_name=name)
        if options:
            params["options"] = options
        with translated():
            self._conn = psycopg.connect(**params, autocommit=True)
        self.transactions = 0

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, name: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run the named query (several statements when it takes no parameters); its rows."""
        self.transactions += 1
        with translated(), self._conn.cursor(row_factory=dict_row) as cur:
            cur.execute(QUERIES[name], params)
            return cur.fetchall() if cur.description else []

    def value(self, name: str, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the named query's first row."""
        rows = self.run(name, params)
        return next(iter(rows[0].values())) if rows else None


class NotifyCounter:
    """Counts the notifications the engine sends on its channel, on a connection of its own.

    PostgreSQL delivers one notification per transaction that notified (identical ones are
    collapsed), so the count is the number of transactions that sent a NOTIFY.
    """

    def __init__(self, dsn: str, channel: str = CHANNEL) -> None:
        self._dsn = dsn
        self._channel = channel
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-notify-counter",
                                        daemon=True)
        self.count = 0
        self.error: BaseException | None = None

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(timeout=10)
        if self.error is not None:
            raise BenchError(f"cannot count notifications: {self.error}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            with psycopg.connect(**connect_kwargs(self._dsn, application_name=BENCH_APP),
                                 autocommit=True) as conn:
                conn.execute(f"LISTEN {self._channel}")
                self._ready.set()
                while not self._stop.is_set():
                    for notify in conn.notifies(timeout=0.1):
                        self._received(notify)
        except psycopg.Error as exc:
            self.error = exc
            self._ready.set()

    def _received(self, notify: psycopg.Notify) -> None:
        self.count += 1


class Arrivals(NotifyCounter):
    """When (wall clock) the first notification of each payload on ``channel`` arrived.
    PostgreSQL sends a notification when the transaction that notified commits."""

    def __init__(self, dsn: str, channel: str) -> None:
        super().__init__(dsn, channel)
        self.at: dict[str, float] = {}

    def _received(self, notify: psycopg.Notify) -> None:
        self.count += 1
        self.at.setdefault(notify.payload, time.time())
