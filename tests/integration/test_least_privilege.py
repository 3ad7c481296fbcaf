"""The roles of the README's table, each tried against the database: the dispatcher dispatches
and can change nothing else; an application role granted its own tables only is captured and
guarded, and can neither touch the event log nor switch the guard off; only orchestrator_admin
moves rows outside their workflow; orchestrator_reader reads."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from orchestrator import admin, schema
from orchestrator.app import Orchestrator
from orchestrator.config import Settings
from orchestrator.errors import OverrideRefused, StoreError
from orchestrator.install import trigger_name
from orchestrator.registry import Registry
from tests.conftest import FAST
from tests.support import database, roles
from tests.support.jobs import jobs

Refused = (psycopg.errors.InsufficientPrivilege, psycopg.errors.CheckViolation)

# What the application's own role is granted: its tables, nothing in the orchestrator schema.
WRITER_GRANTS = """
GRANT SELECT, INSERT, UPDATE ON jobs, orders TO {role};
CREATE SCHEMA {role} AUTHORIZATION {role};
"""

# Everything a writer (or a dispatcher) might do to the event log, the definitions or the
# trigger functions without a grant for it.
EVENT_LOG_WRITES = [
    "INSERT INTO orchestrator.events (workflow, row_key, column_name, op, new_row)"
    " VALUES ('jobs', '1', 'status', 'INSERT', '{\"id\": 1, \"status\": \"new\"}')",
    "UPDATE orchestrator.events SET new_row = '{}'",
    "UPDATE orchestrator.events SET workflow = 'food_order', row_key = '1'",
    "DELETE FROM orchestrator.events",
    "TRUNCATE orchestrator.events",
    "INSERT INTO orchestrator.transitions VALUES ('jobs', 'new', 'finished', 'skip')",
    "UPDATE orchestrator.workflows SET initial_state = 'finished'",
    "CREATE OR REPLACE FUNCTION orchestrator.guard_v2() RETURNS trigger"
    " LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    "DELETE FROM orchestrator.events_history",
    "DROP TABLE orchestrator.events_history",
    "INSERT INTO orchestrator.prunes (finished_before, events, partitions) VALUES (now(), 0, 0)",
    "SELECT orchestrator.prune_dead_v1(now(), NULL, NULL, false)",
]
# Only dispatchers and administrators apply the retention (through the definer functions).
RETENTION = [
    "SELECT orchestrator.archive_v1(now(), NULL, true, '1 hour')",
    "SELECT * FROM orchestrator.prune_v1(now(), false, true)",
]


@pytest.fixture
def writer(dsn: str) -> Iterator[str]:
    """A login role granted SELECT, INSERT, UPDATE on jobs and orders and a schema of its
    own, and nothing in the orchestrator schema."""
    with roles.login_role(dsn, prefix="orch_writer", grants=WRITER_GRANTS) as role_dsn:
        yield role_dsn


def denied(error: str) -> bool:
    """Whether ``error`` is PostgreSQL refusing a privilege."""
    return "permission denied" in error or "must be owner" in error


def refused(role_dsn: str, *statements: str) -> str:
    """Run ``statements`` as a role in one transaction; the error the last one raised (the
    earlier ones must succeed). Fails the test if it did not raise."""
    with psycopg.connect(role_dsn) as conn:
        for statement in statements[:-1]:
            conn.execute(statement)  # type: ignore[arg-type]
        with pytest.raises(Refused) as raised:
            conn.execute(statements[-1])  # type: ignore[arg-type]
    return str(raised.value).splitlines()[0]


# -- the dispatcher ------------------------------------------------------------------------------

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


def test_the_dispatcher_role_applies_the_retention_and_an_admin_prunes_dead_events(
        dsn: str, sql: Any, registry: Registry) -> None:
    sql("INSERT INTO jobs (fail_times) SELECT 0 FROM generate_series(1, 3)")
    with Orchestrator(Settings.load(env={}, dsn=dsn, **FAST), registry) as orch:
        orch.dispatcher(until_idle=True).run()
    sql("UPDATE orchestrator.events SET finished_at = now() - interval '5 days'")
    with roles.dispatcher_role(dsn) as role_dsn, \
            Orchestrator(Settings.load(env={}, dsn=role_dsn, **FAST), registry) as orch:
        assert orch.store.archive(after_s=10, max_rows=100) == 9
        pruned = orch.store.prune(timedelta(days=1))
        assert pruned is not None and pruned.events == 9
        with pytest.raises(StoreError, match="permission denied"):
            orch.reports.prune_dead(timedelta(0), workflow=None, handler=None)
    event = dead_job(dsn, sql, registry)
    with roles.login_role(dsn, prefix="orch_admin", member_of="orchestrator_admin") as admin_dsn, \
            Orchestrator(Settings.load(env={}, dsn=admin_dsn, pool_size=1)) as orch:
        assert orch.reports.prune_dead(timedelta(0), workflow="jobs", handler=None) == 1
        assert orch.reports.prune(timedelta(days=1)).events == 0
    assert sql("SELECT count(*) FROM orchestrator.events WHERE id = %s", (event,)) == [(0,)]


@pytest.mark.parametrize("statement", [
    "ALTER TABLE orchestrator.events ADD COLUMN x integer",
    "CREATE TABLE orchestrator.x (id integer)",
    "CREATE TABLE public.x (id integer)",
    "DROP TABLE orders",
    f"DROP TRIGGER {trigger_name(jobs, 'guard_update')} ON jobs",
    "SELECT * FROM orchestrator.event_errors",
    "SELECT * FROM orchestrator.transitions",
    *EVENT_LOG_WRITES,
])
def test_the_dispatcher_cannot_change_the_schema_nor_what_events_say(
        dsn: str, statement: str) -> None:
    with roles.dispatcher_role(dsn) as role_dsn:
        assert denied(refused(role_dsn, statement))


def test_the_dispatcher_cannot_switch_the_guard_off(dsn: str, sql: Any) -> None:
    [(job,)] = sql("INSERT INTO jobs DEFAULT VALUES RETURNING id")
    with roles.dispatcher_role(dsn) as role_dsn:
        error = refused(role_dsn, "SET orchestrator.override = 'on'",
                        f"UPDATE jobs SET status = 'finished' WHERE id = {job}")
    assert "does not allow 'new' -> 'finished' (orchestrator.override is on, but" in error
    assert "is not a member of orchestrator_admin" in error


def test_the_role_cannot_migrate(dsn: str, registry: Registry) -> None:
    with roles.dispatcher_role(dsn) as role_dsn, \
            Orchestrator(Settings.load(env={}, dsn=role_dsn), registry) as orch, \
            pytest.raises(StoreError, match="permission denied"):
        schema.install_registry(orch.pool, Registry([registry.workflow("jobs")]))


# -- an application role with privileges on its own tables only ---------------------------------

def test_a_writer_granted_its_tables_only_is_captured(writer: str, sql: Any) -> None:
    with psycopg.connect(writer) as conn:
        conn.execute("INSERT INTO jobs DEFAULT VALUES")
        # An order has a deadline while placed: entering the state schedules it, leaving it
        # cancels it.
        conn.execute("INSERT INTO orders (ref, customer_id, restaurant_id, total_cents)"
                     " VALUES ('writer-1', 1, 1, 0)")
        conn.execute("UPDATE orders SET status = 'cancelled' WHERE ref = 'writer-1'")
    assert sql("SELECT workflow, op, new_value, status, outcome FROM orchestrator.events"
               " ORDER BY id") == [
        ("jobs", "INSERT", "new", "pending", None),
        ("food_order", "INSERT", "placed", "pending", None),
        ("food_order", "TIMER", "rejected", "done", "cancelled"),
        ("food_order", "UPDATE", "cancelled", "pending", None)]


@pytest.mark.parametrize("setting", [
    "SET orchestrator.override = 'on'",
    "SET LOCAL orchestrator.override = 'on'",
    "SELECT set_config('orchestrator.override', 'on', false)",
])
def test_a_writer_cannot_switch_the_guard_off(writer: str, sql: Any, setting: str) -> None:
    [(job,)] = sql("INSERT INTO jobs DEFAULT VALUES RETURNING id")
    error = refused(writer, setting, f"UPDATE jobs SET status = 'finished' WHERE id = {job}")
    assert "does not allow 'new' -> 'finished' (orchestrator.override is on, but" in error
    assert sql("SELECT status FROM jobs WHERE id = %s", (job,)) == [("new",)]


def test_a_writer_cannot_switch_the_guard_off_for_its_sessions(writer: str, sql: Any) -> None:
    """ALTER ROLE ... SET of a custom setting for oneself: refused from PostgreSQL 17 (and
    without USER SET on 16); where the server takes it, the guard still refuses."""
    [(job,)] = sql("INSERT INTO jobs DEFAULT VALUES RETURNING id")
    with psycopg.connect(writer, autocommit=True) as conn:
        for user_set in ("", " USER SET"):
            try:
                conn.execute(f"ALTER ROLE CURRENT_USER SET orchestrator.override = 'on'"
                             f"{user_set}")  # type: ignore[arg-type]
                break
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.SyntaxError):
                continue
    with psycopg.connect(writer) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE jobs SET status = 'finished' WHERE id = %s", (job,))


def test_a_writer_cannot_switch_the_guard_off_at_connect_time(writer: str, sql: Any) -> None:
    [(job,)] = sql("INSERT INTO jobs DEFAULT VALUES RETURNING id")
    options = conninfo.make_conninfo(writer, options="-c orchestrator.override=on")
    with psycopg.connect(options) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE jobs SET status = 'finished' WHERE id = %s", (job,))


@pytest.mark.parametrize("statement", [
    "SET session_replication_role = replica",  # would skip every ordinary trigger
    "SET ROLE orchestrator_admin",
    "ALTER TABLE jobs DISABLE TRIGGER ALL",
    f"DROP TRIGGER {trigger_name(jobs, 'guard_update')} ON jobs",
])
def test_a_writer_cannot_get_around_the_guard(writer: str, statement: str) -> None:
    assert denied(refused(writer, statement))


def test_a_writer_cannot_redirect_the_trigger_functions_through_its_search_path(
        writer: str, sql: Any) -> None:
    """The trigger functions pin their search_path. An operator ->> of the writer's, which
    would make 'finished' read as 'working' (new -> working is legal), never fools the guard;
    a to_jsonb of its own never reaches what capture records."""
    [(job,)] = sql("INSERT INTO jobs DEFAULT VALUES RETURNING id")
    user = conninfo.conninfo_to_dict(writer)["user"]
    with psycopg.connect(writer, autocommit=True) as conn:
        conn.execute(f"""
            CREATE FUNCTION {user}.arrow(j jsonb, k text) RETURNS text LANGUAGE sql AS $$
                SELECT CASE WHEN pg_catalog.jsonb_object_field_text(j, k) = 'finished'
                            THEN 'working'
                            ELSE pg_catalog.jsonb_object_field_text(j, k) END $$;
            CREATE OPERATOR {user}.->> (LEFTARG = jsonb, RIGHTARG = text,
                                        FUNCTION = {user}.arrow)""")  # type: ignore[arg-type]
    error = refused(writer, f"SET search_path = {user}, pg_catalog",
                    f"UPDATE public.jobs SET status = 'finished' WHERE id = {job}")
    assert "does not allow 'new' -> 'finished'" in error

    with psycopg.connect(writer) as conn:
        conn.execute(f"""
            CREATE FUNCTION {user}.to_jsonb(r anyelement) RETURNS jsonb LANGUAGE sql AS $$
                SELECT '{{"status": "forged"}}'::jsonb $$""")  # type: ignore[arg-type]
        conn.execute(f"SET search_path = {user}, pg_catalog")  # type: ignore[arg-type]
        conn.execute("UPDATE public.jobs SET status = 'working' WHERE id = %s", (job,))
    assert sql("SELECT new_row ->> 'status', new_row ->> 'id' FROM orchestrator.events"
               " WHERE op = 'UPDATE'") == [("working", str(job))]


@pytest.mark.parametrize("statement", [
    *EVENT_LOG_WRITES,
    *RETENTION,
    "SELECT * FROM orchestrator.events",
    "SELECT * FROM orchestrator.event_log",
])
def test_a_writer_cannot_touch_the_event_log(writer: str, statement: str) -> None:
    assert denied(refused(writer, statement))


def test_nobody_else_can_attach_the_trigger_functions(writer: str, sql: Any) -> None:
    """Attached to a table of one's own, capture would record events of any workflow made up
    at will; EXECUTE on it is the owner's alone (checked when a trigger is created)."""
    user = conninfo.conninfo_to_dict(writer)["user"]
    sql(f"GRANT USAGE ON SCHEMA orchestrator TO {user}")
    forge = (f"CREATE TABLE {user}.fake (id bigint, status text)",
             f"CREATE TRIGGER forge AFTER INSERT ON {user}.fake FOR EACH ROW EXECUTE FUNCTION"
             " orchestrator.capture_v2('food_order', 'id', 'status')")
    assert "permission denied for function orchestrator.capture_v2" in refused(writer, *forge)


# -- the administrator and the reader --------------------------------------------------------------

def test_only_an_admin_moves_a_row_outside_its_workflow(dsn: str, sql: Any) -> None:
    [(job,)] = sql("INSERT INTO jobs DEFAULT VALUES RETURNING id")
    illegal = f"UPDATE jobs SET status = 'finished' WHERE id = {job}"
    with roles.login_role(dsn, prefix="orch_admin", member_of="orchestrator_admin",
                          grants="GRANT SELECT, UPDATE ON jobs TO {role}") as admin_dsn:
        assert "does not allow" in refused(admin_dsn, illegal)  # not without asking
        with psycopg.connect(admin_dsn) as conn:
            conn.execute("SET LOCAL orchestrator.override = 'on'")
            conn.execute(illegal)  # type: ignore[arg-type]
    assert sql("SELECT status FROM jobs WHERE id = %s", (job,)) == [("finished",)]
    assert sql("SELECT op, old_value, new_value FROM orchestrator.events"
               " WHERE op = 'UPDATE'") == [("UPDATE", "new", "finished")]


def dead_job(dsn: str, sql: Any, registry: Registry) -> int:
    """A job whose handler failed every attempt: its event is dead, the row failed."""
    [(job,)] = sql("INSERT INTO jobs (fail_times) VALUES (99) RETURNING id")
    with Orchestrator(Settings.load(env={}, dsn=dsn, **FAST), registry) as orch:
        orch.dispatcher(until_idle=True).run()
    assert sql("SELECT status FROM jobs WHERE id = %s", (job,)) == [("failed",)]
    [(event,)] = sql("SELECT id FROM orchestrator.events WHERE status = 'dead'")
    return int(event)


def test_a_redrive_out_of_the_failure_state_needs_the_admin_role(
        dsn: str, sql: Any, registry: Registry) -> None:
    event = dead_job(dsn, sql, registry)
    with roles.dispatcher_role(dsn) as role_dsn, \
            Orchestrator(Settings.load(env={}, dsn=role_dsn, pool_size=1)) as orch, \
            pytest.raises(OverrideRefused) as refusal:
        admin.redrive(orch.reports, ids=[event])
    assert f"redriving event {event} would move its row out of the failure state" in \
        str(refusal.value)
    assert "\n" not in str(refusal.value)
    assert sql("SELECT status FROM orchestrator.events WHERE id = %s", (event,)) == [("dead",)]

    with roles.login_role(dsn, prefix="orch_admin", member_of="orchestrator_admin",
                          grants="GRANT SELECT, UPDATE ON jobs TO {role}") as admin_dsn, \
            Orchestrator(Settings.load(env={}, dsn=admin_dsn, pool_size=1)) as orch:
        assert [e["id"] for e in admin.redrive(orch.reports, ids=[event])] == [event]
    assert sql("SELECT status FROM jobs") == [("new",)]
    assert sql("SELECT status FROM orchestrator.events WHERE id = %s", (event,)) == [
        ("pending",)]


def test_a_reader_reads_and_changes_nothing(dsn: str, sql: Any, registry: Registry) -> None:
    event = dead_job(dsn, sql, registry)
    with roles.login_role(dsn, prefix="orch_reader", member_of="orchestrator_reader",
                          grants="GRANT SELECT ON jobs, orders, tickets TO {role}") as reader_dsn:
        with Orchestrator(Settings.load(env={}, dsn=reader_dsn, pool_size=1)) as orch:
            assert admin.status(orch.reports)["workflows"]
            assert admin.history(orch.reports, jobs, str(sql("SELECT id FROM jobs")[0][0]))
            with pytest.raises(StoreError, match="permission denied"):
                admin.redrive(orch.reports, ids=[event])
        for statement in EVENT_LOG_WRITES + RETENTION:
            assert denied(refused(reader_dsn, statement))
