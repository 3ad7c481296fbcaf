"""The pool pings a connection before handing it out only when it sat idle FRESH_S or more: a
dead one is then replaced; one given back a moment ago goes out unpinged (its first statement
meets the loss, DatabaseUnavailable as for any lost connection)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from orchestrator import db
from orchestrator.errors import DatabaseUnavailable


@pytest.fixture
def pool(dsn: str) -> Iterator[Any]:
    pool = db.make_pool(dsn, max_size=1)
    db.open_pool(pool, dsn)
    yield pool
    pool.close()


def _terminate_pooled(pool: Any, dsn: str) -> int:
    """End the server session of the pool's one connection, as a server restart would."""
    with db.borrowed(pool) as conn:
        pid = conn.info.backend_pid
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
    return pid


def test_a_connection_idle_long_enough_is_pinged_and_a_dead_one_replaced(
        pool: Any, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "FRESH_S", 0.0)
    dead = _terminate_pooled(pool, dsn)
    with db.borrowed(pool) as conn:
        assert conn.execute("SELECT pg_backend_pid()").fetchone() != (dead,)


def test_a_connection_given_back_a_moment_ago_goes_out_without_a_ping(
        pool: Any, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "FRESH_S", 3600.0)
    _terminate_pooled(pool, dsn)
    with pytest.raises(DatabaseUnavailable), db.borrowed(pool) as conn:
        conn.execute("SELECT 1")
    with db.borrowed(pool) as again:  # the pool discarded the broken one
        assert again.execute("SELECT 1").fetchone() == (1,)
