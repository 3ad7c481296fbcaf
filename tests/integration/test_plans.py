"""The generic plans PostgreSQL may keep for the engine's prepared statements once they have
run a few times: a batch's events are found by primary key, however few running events the
table's statistics promise (custom plans know the batch's length and join by hash)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from orchestrator.app import Orchestrator
from orchestrator.config import Settings
from orchestrator.events import Next
from orchestrator.outcomes import Outcome, Result
from orchestrator.registry import Registry
from tests.support.jobs import jobs


@contextmanager
def sent(statements: list[tuple[str, dict[str, Any]]]) -> Iterator[None]:
    """Record each statement that updates orchestrator.events, with its parameters."""
    execute = psycopg.Connection.execute

    def recording(self: psycopg.Connection[Any], query: Any, params: Any = None,
                  **kw: Any) -> Any:
        text = query.decode() if isinstance(query, bytes) else str(query)
        if "UPDATE orchestrator.events" in text and isinstance(params, dict):
            statements.append((text, params))
        return execute(self, query, params, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(psycopg.Connection, "execute", recording)
        yield


def generic_plan(conn: psycopg.Connection[Any], text: str, params: dict[str, Any]) -> str:
    """The plan PostgreSQL keeps for ``text`` prepared (its generic plan), as JSON text."""
    names: list[str] = []

    def numbered(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    conn.execute("DEALLOCATE ALL")
    conn.execute("PREPARE finish AS " + re.sub(r"%\((\w+)\)s", numbered, text))
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute("SET enable_seqscan = off")  # as index_plans sets it for a write-back
    explain = pgsql.SQL("EXPLAIN (FORMAT JSON) EXECUTE finish ({})").format(
        pgsql.SQL(", ").join(pgsql.Literal(params[n]) for n in names))
    return json.dumps(conn.execute(explain).fetchone()[0])  # type: ignore[index]


def test_a_batch_is_renewed_and_finished_through_the_primary_key_whatever_the_statistics(
        settings: Settings, registry: Registry, sql: Any, dsn: str) -> None:
    # Statistics taken while nothing ran: they promise next to no running event, which made
    # the kept plan compare every running event with every result of a batch.
    sql("INSERT INTO jobs (status) SELECT 'new' FROM generate_series(1, 300)")
    sql("UPDATE orchestrator.events SET status = 'done', outcome = 'applied'")
    sql("ANALYZE orchestrator.events")
    sql("INSERT INTO jobs (status) SELECT 'new' FROM generate_series(1, 60)")
    statements: list[tuple[str, dict[str, Any]]] = []
    with Orchestrator(settings, registry) as orch:
        orch.store.use_workflows([jobs])
        claimed = sorted(orch.store.claim(60), key=lambda e: e.id)
        applied, noop, retried = claimed[:20], claimed[20:40], claimed[40:]
        with sent(statements):
            orch.store.extend_leases([e.id for e in claimed])  # the heartbeat
            report = orch.store.finish(
                [Result(e, Outcome.APPLIED, handler="h", next=Next("working")) for e in applied]
                + [Result(e, Outcome.NOOP, handler="h") for e in noop]
                + [Result(e, Outcome.RETRY, handler="h", error="later", delay_s=60)
                   for e in retried])
    assert len(report.outcomes) == 60
    finishing = [(t, p) for t, p in statements if "SET status = 'running'" not in t]
    assert len(finishing) == 4  # the heartbeat, the write-back, finish_many and retry
    with psycopg.connect(dsn, autocommit=True) as conn:
        for text, params in finishing:
            plan = generic_plan(conn, text, params)
            assert "events_pkey" in plan and "events_leased" not in plan, plan
