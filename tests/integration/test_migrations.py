"""The orchestrator's migrations own only the orchestrator schema: on a database full of an
application's tables they add nothing elsewhere but the triggers of the workflows installed,
and `downgrade base` leaves the application's tables and rows exactly as they were."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from orchestrator import Workflow, schema
from orchestrator.app import Orchestrator
from orchestrator.config import Settings
from orchestrator.errors import MigrationError
from orchestrator.registry import Registry
from orchestrator.sql import INSTALL
from tests.conftest import FAST
from tests.support import database
from tests.support.processes import ROOT, wait_for

# An application that was there first: tables named like the demo's, another schema, a
# uuid key, a text key, mixed-case quoted names, and an Alembic history of its own.
APPLICATION = """
CREATE TABLE public.orders (id bigint PRIMARY KEY, status text NOT NULL DEFAULT 'new',
                            note text);
CREATE TABLE public.payments (id serial PRIMARY KEY, order_id bigint, amount numeric);
CREATE TABLE public.alembic_version (version_num varchar(32) PRIMARY KEY);
INSERT INTO public.alembic_version VALUES ('app_0042');
CREATE SCHEMA app;
CREATE TABLE app.tickets (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                          status text NOT NULL DEFAULT 'open');
CREATE SCHEMA "Billing";
CREATE TABLE "Billing"."Invoice" ("Ref" text PRIMARY KEY, "State" text NOT NULL DEFAULT 'Draft');
INSERT INTO public.orders VALUES (1, 'new', 'first'), (2, 'new', NULL);
INSERT INTO public.payments (order_id, amount) VALUES (1, 9.5);
INSERT INTO app.tickets (status) VALUES ('open');
INSERT INTO "Billing"."Invoice" VALUES ('INV-1', 'Draft');
"""

# Everything of the application's the catalog knows: relations, columns, functions, triggers.
CATALOG = """
SELECT 'relation', n.nspname || '.' || c.relname || ':' || c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'orchestrator')
  AND n.nspname NOT LIKE 'pg_toast%'
UNION ALL
SELECT 'function', n.nspname || '.' || p.proname
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'orchestrator')
UNION ALL
SELECT 'trigger', c.relname || '.' || t.tgname
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE NOT t.tgisinternal
UNION ALL
SELECT 'schema', nspname FROM pg_namespace WHERE nspname = 'orchestrator'
ORDER BY 1, 2
"""
DATA = """
SELECT * FROM (
    SELECT 'orders' AS t, to_jsonb(o)::text AS r FROM public.orders o
    UNION ALL SELECT 'payments', to_jsonb(p)::text FROM public.payments p
    UNION ALL SELECT 'alembic', to_jsonb(a)::text FROM public.alembic_version a
    UNION ALL SELECT 'tickets', to_jsonb(t)::text FROM app.tickets t
    UNION ALL SELECT 'invoice', to_jsonb(i)::text FROM "Billing"."Invoice" i) rows
ORDER BY t, r
"""

orders = Workflow("user_orders", table="public.orders", key="id", column="status",
                  states=["new", "done"], initial="new", terminal=["done"],
                  transitions=[{"trigger": "finish", "source": "new", "dest": "done"}])
tickets = Workflow("user_tickets", table="app.tickets", key="id", column="status",
                   states=["open", "closed"], initial="open", terminal=["closed"],
                   transitions=[{"trigger": "close", "source": "open", "dest": "closed"}])
invoices = Workflow("invoices", table="Billing.Invoice", key="Ref", column="State",
                    states=["Draft", "Sent"], initial="Draft", terminal=["Sent"],
                    transitions=[{"trigger": "send", "source": "Draft", "dest": "Sent"}])


@orders.on_enter("new")
def finish_order(event: Any) -> str:
    return "done"


@tickets.on_enter("open")
def close_ticket(event: Any) -> str:
    return "closed"


@invoices.on("Draft", "Sent")
def send_invoice(event: Any) -> None:
    return None


@pytest.fixture
def app_dsn(admin_dsn: str) -> Iterator[str]:
    """A database holding only the application's tables and rows."""
    with database.scratch_database(admin_dsn, "orch_app", APPLICATION) as dsn:
        yield dsn


def read(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]


def test_migrations_touch_nothing_outside_their_schema_and_downgrade_leaves_the_app(
        app_dsn: str) -> None:
    catalog, data = read(app_dsn, CATALOG), read(app_dsn, DATA)
    schema.upgrade(app_dsn)
    assert schema.current_revision(app_dsn) == schema.head_revision()
    after = set(read(app_dsn, CATALOG)) - set(catalog)
    assert after == {("schema", "orchestrator")}, "a migration created something outside"
    assert read(app_dsn, "SELECT version_num FROM orchestrator.alembic_version") == [
        (schema.head_revision(),)]
    assert read(app_dsn, DATA) == data

    schema.downgrade(app_dsn, "base")
    assert read(app_dsn, CATALOG) == catalog
    assert read(app_dsn, DATA) == data
    schema.upgrade(app_dsn)
    assert schema.current_revision(app_dsn) == schema.head_revision()


def test_workflows_on_the_apps_own_tables_run_and_leave_no_trace_after_downgrade(
        app_dsn: str) -> None:
    catalog = read(app_dsn, CATALOG)
    registry = Registry([orders, tickets, invoices])
    settings = Settings.load(env={}, dsn=app_dsn, **FAST)
    with Orchestrator(settings, registry) as orch:
        assert orch.migrate() == ["invoices", "user_orders", "user_tickets"]
        added = {name for kind, name in set(read(app_dsn, CATALOG)) - set(catalog)
                 if kind == "trigger"}
        assert added and all(".orchestrator_" in name for name in added)
        with psycopg.connect(app_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO public.orders (id) VALUES (3)")
            conn.execute("INSERT INTO app.tickets DEFAULT VALUES")
            conn.execute("""UPDATE "Billing"."Invoice" SET "State" = 'Sent'""")
        stats = orch.dispatcher(until_idle=True).run()
    assert stats.dead == 0
    assert read(app_dsn, "SELECT id, status FROM public.orders WHERE id = 3") == [(3, "done")]
    # The ticket that was there before the triggers has no event; the new one went through.
    assert read(app_dsn, "SELECT status, count(*) FROM app.tickets GROUP BY 1 ORDER BY 1") == [
        ("closed", 1), ("open", 1)]
    keys = read(app_dsn, "SELECT workflow, row_key FROM orchestrator.event_log "
                         "WHERE workflow = 'invoices'")
    assert keys == [("invoices", "INV-1")]

    data = read(app_dsn, DATA)
    schema.downgrade(app_dsn, "base")
    assert read(app_dsn, CATALOG) == catalog
    assert read(app_dsn, DATA) == data
    with psycopg.connect(app_dsn, autocommit=True) as conn:  # no guard left behind either
        conn.execute("UPDATE public.orders SET status = 'anything' WHERE id = 3")


def test_a_database_migrated_by_an_older_build_keeps_its_history(app_dsn: str) -> None:
    schema.upgrade(app_dsn)
    with psycopg.connect(app_dsn, autocommit=True) as conn:  # where builds before 0.1.0 kept it
        conn.execute("ALTER TABLE orchestrator.alembic_version "
                     "RENAME TO orchestrator_alembic_version")
        conn.execute("ALTER TABLE orchestrator.orchestrator_alembic_version SET SCHEMA public")
    schema.upgrade(app_dsn)
    assert schema.current_revision(app_dsn) == schema.head_revision()
    assert read(app_dsn, "SELECT to_regclass('public.orchestrator_alembic_version')") == [
        (None,)]
    assert read(app_dsn, "SELECT version_num FROM public.alembic_version") == [("app_0042",)]


def test_downgrading_a_database_without_the_schema_changes_nothing(app_dsn: str) -> None:
    catalog = read(app_dsn, CATALOG)
    assert schema.downgrade(app_dsn, "base") is False
    assert read(app_dsn, CATALOG) == catalog


def test_a_migration_error_is_one_line(app_dsn: str) -> None:
    schema.upgrade(app_dsn)
    with pytest.raises(MigrationError) as failed:
        schema.downgrade(app_dsn, "no_such_revision")
    assert "\n" not in str(failed.value)
    assert "no_such_revision" in str(failed.value)


def test_migrate_twice_is_a_no_op(dsn: str, settings: Any, registry: Any) -> None:
    with Orchestrator(settings, registry) as orch:
        assert orch.migrate() == ["food_order", "jobs", "tickets"]
        assert orch.migrate() == ["food_order", "jobs", "tickets"]


TRIGGERS = """
SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE NOT t.tgisinternal AND t.tgname LIKE 'orchestrator%'
ORDER BY 1, 2
"""
PRIVILEGES = """
SELECT r.rolname, has_table_privilege(r.rolname, 'orchestrator.events', 'INSERT'),
       has_table_privilege(r.rolname, 'orchestrator.events', 'UPDATE'),
       has_column_privilege(r.rolname, 'orchestrator.events', 'status', 'UPDATE'),
       has_table_privilege(r.rolname, 'orchestrator.transitions', 'SELECT'),
       has_schema_privilege(r.rolname, 'orchestrator', 'USAGE')
FROM pg_roles r
WHERE r.rolname IN ('orchestrator_dispatcher', 'orchestrator_admin', 'orchestrator_reader')
ORDER BY 1
"""


def test_revision_0004_takes_over_the_installed_triggers_and_gives_them_back(
        dsn: str, sql: Any) -> None:
    """A database at 0003 with workflows installed, one on a partitioned table: upgrading
    re-creates each trigger in place on the SECURITY DEFINER functions (same name, table,
    event, WHEN and arguments; a partition's clones follow; 0006 and 0007 move capture on to
    v3, then v4) and narrows the dispatcher; downgrading restores 0003's functions and grants."""
    sql("CREATE TABLE parts (id bigint PRIMARY KEY, status text NOT NULL DEFAULT 'new')"
        " PARTITION BY RANGE (id)")
    sql("CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (100)")
    with psycopg.connect(dsn) as conn:
        schema.install_workflows(conn, Workflow(
            "parts", table="public.parts", states=["new", "done"], initial="new",
            terminal=["done"], transitions=[("finish", "new", "done")]))
    at_head = sql(TRIGGERS)
    assert len([row for row in at_head if row[0] == "parts_1"]) == 4
    assert at_head and all("guard_v2(" in definition or "capture_v4(" in definition
                           for _, _, definition in at_head)
    assert sql(PRIVILEGES) == [
        ("orchestrator_admin", False, False, True, True, True),
        ("orchestrator_dispatcher", False, False, True, False, True),
        ("orchestrator_reader", False, False, False, True, True)]

    schema.downgrade(dsn, "0003")
    assert sql(TRIGGERS) == [(table, name, definition.replace("_v2(", "_v1(")
                              .replace("_v3(", "_v1(").replace("_v4(", "_v1("))
                             for table, name, definition in at_head]
    assert ("orchestrator_dispatcher", True, True, True, True, True) in sql(PRIVILEGES)
    assert not [row for row in sql(PRIVILEGES) if row[0] != "orchestrator_dispatcher"
                and any(row[1:])], "the admin and reader roles keep nothing in this database"
    assert sql("SELECT to_regprocedure('orchestrator.capture_v2()')") == [(None,)]

    schema.upgrade(dsn)
    assert sql(TRIGGERS) == at_head
    sql("INSERT INTO jobs DEFAULT VALUES")
    assert sql("SELECT workflow, op FROM orchestrator.events") == [("jobs", "INSERT")]


def test_revision_0009_leaves_room_on_the_queues_pages_and_takes_it_back(
        dsn: str, sql: Any) -> None:
    options = "SELECT reloptions FROM pg_class WHERE oid = 'orchestrator.events'::regclass"
    assert sql(options) == [(["fillfactor=50"],)]
    schema.downgrade(dsn, "0006")
    assert sql(options) == [(None,)]
    schema.upgrade(dsn)
    assert sql(options) == [(["fillfactor=50"],)]


def test_concurrent_migrate_runs_take_turns(app_dsn: str) -> None:
    argv = [sys.executable, "-m", "orchestrator", "migrate", "--dsn", app_dsn,
            "--handlers", "tests.integration.test_migrations"]
    waiting = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
               " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    with psycopg.connect(app_dsn, autocommit=True) as holder:
        holder.execute(INSTALL["migrate_lock"])  # as a migration already under way would
        procs = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(3)]
        try:
            wait_for(lambda: read(app_dsn, waiting)[0][0] == 3
                     or any(p.poll() is not None for p in procs),
                     what="three migrations waiting for the one under way")
            assert read(app_dsn, waiting) == [(3,)]
        finally:
            holder.execute("SELECT pg_advisory_unlock_all()")
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert schema.current_revision(app_dsn) == schema.head_revision()
    assert read(app_dsn, "SELECT name FROM orchestrator.workflows ORDER BY 1") == [
        ("invoices",), ("user_orders",), ("user_tickets",)]
    # And what they installed works: a new order runs through its trigger and guard.
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.orders (id) VALUES (3)")
    assert read(app_dsn, "SELECT workflow, new_value FROM orchestrator.events") == [
        ("user_orders", "new")]
