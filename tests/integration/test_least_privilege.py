"""The migration's dispatcher role: enough to dispatch, nothing to change the schema with."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from orchestrator import schema
from orchestrator.app import Orchestrator
from orchestrator.config import Settings
from orchestrator.errors import StoreError
from orchestrator.registry import Registry
from tests.conftest import FAST
from tests.support import database, roles


def test_a_dispatcher_works_as_the_least_privilege_role(
        dsn: str, sql: Any, registry: Registry) -> None:
    sql("INSERT INTO jobs (fail_times) SELECT n % 2 FROM generate_series(1, 20) n")
    order = database.place_order(sql, "least-1")  # an order that goes all the way
    with roles.dispatcher_role(dsn) as role_dsn:
        settings = Settings.load(env={}, dsn=role_dsn, **FAST)
        with Orchestrator(settings, registry) as orch:
            stats = orch.dispatcher(until_idle=True).run()
    assert sql("SELECT status, count(*) FROM jobs GROUP BY 1") == [("finished", 20)]
    # The order used every grant the demo's handlers need: reference data read, payment
    # inserted, agent taken and freed, order written back at each step.
    assert sql("SELECT status FROM orders WHERE id = %s", (order,)) == [("delivered",)]
    assert sql("SELECT count(*) FROM payments WHERE order_id = %s", (order,)) == [(1,)]
    assert sql("SELECT count(*) FROM agents WHERE deliveries = 1 AND active_order IS NULL"
               ) == [(1,)]
    # Two per job (start, finish), six for the order: placed to delivered.
    assert stats.applied == 46
    assert sql("SELECT count(*) FROM orchestrator.events WHERE outcome = 'applied'") == [(46,)]
    assert sql("SELECT count(*) FROM orchestrator.events WHERE status IN ('pending', 'running')"
               ) == [(0,)]
    assert sql("SELECT error FROM orchestrator.event_errors WHERE error NOT LIKE"
               " 'RuntimeError: boom on attempt 1'") == []


@pytest.mark.parametrize("statement", [
    "ALTER TABLE orchestrator.events ADD COLUMN x integer",
    "CREATE TABLE orchestrator.x (id integer)",
    "CREATE TABLE public.x (id integer)",
    "DROP TABLE orders",
    "TRUNCATE orchestrator.events",
    "DELETE FROM orchestrator.events",
    "CREATE OR REPLACE FUNCTION orchestrator.capture_v1() RETURNS trigger"
    " LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
    "DROP TRIGGER orchestrator_jobs_guard_update ON jobs",
    "UPDATE orchestrator.workflows SET initial_state = 'x'",
])
def test_the_role_cannot_change_the_schema(dsn: str, statement: str) -> None:
    with roles.dispatcher_role(dsn) as role_dsn, psycopg.connect(role_dsn) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)  # type: ignore[arg-type]


def test_the_role_cannot_migrate(dsn: str, registry: Registry) -> None:
    with roles.dispatcher_role(dsn) as role_dsn, \
            Orchestrator(Settings.load(env={}, dsn=role_dsn), registry) as orch, \
            pytest.raises(StoreError, match="permission denied"):
        schema.install_registry(orch.pool, Registry([registry.workflow("jobs")]))


def test_a_role_writing_a_workflow_table_needs_the_event_log_too(dsn: str, sql: Any) -> None:
    name = database.unique_name("orch_writer")
    sql(f"CREATE ROLE {name} LOGIN")
    sql(f"GRANT INSERT, SELECT, UPDATE ON jobs, orders TO {name}")
    writer = conninfo.make_conninfo(dsn, user=name)
    try:
        with psycopg.connect(writer) as conn, pytest.raises(
                psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO jobs DEFAULT VALUES")
        sql(f"GRANT USAGE ON SCHEMA orchestrator TO {name}")
        sql(f"GRANT SELECT, INSERT, UPDATE ON orchestrator.events TO {name}")
        sql(f"GRANT SELECT ON orchestrator.workflows, orchestrator.transitions,"
            f" orchestrator.deadlines TO {name}")
        with psycopg.connect(writer) as conn:
            conn.execute("INSERT INTO jobs DEFAULT VALUES")
            # An order has a deadline while placed: entering and leaving the state schedules
            # and cancels it.
            conn.execute("INSERT INTO orders (ref, customer_id, restaurant_id, total_cents)"
                         " VALUES ('writer-1', 1, 1, 0)")
            conn.execute("UPDATE orders SET status = 'cancelled' WHERE ref = 'writer-1'")
        assert sql("SELECT workflow, op, count(*) FROM orchestrator.events"
                   " GROUP BY 1, 2 ORDER BY 1, 2") == [
            ("food_order", "INSERT", 1), ("food_order", "TIMER", 1),
            ("food_order", "UPDATE", 1), ("jobs", "INSERT", 1)]
    finally:
        sql(f"DROP OWNED BY {name}")
        sql(f"DROP ROLE {name}")
