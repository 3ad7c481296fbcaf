"""The orchestrator as a user gets it: `pip install` of this checkout (not editable) into a
fresh virtual environment, used from a folder of the user's own, on a database that already
holds the user's application: its own `orders` and `payments`, a uuid-keyed workflow table in
another schema, and an Alembic history of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support import database

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

APPLICATION = """
CREATE TABLE public.orders (id bigint PRIMARY KEY, customer text NOT NULL);
CREATE TABLE public.payments (id serial PRIMARY KEY, order_id bigint, cents integer);
INSERT INTO public.orders VALUES (1, 'ada'), (2, 'grace');
INSERT INTO public.payments (order_id, cents) VALUES (1, 1250);
CREATE SCHEMA app;
CREATE TABLE app.tickets (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                          status text NOT NULL DEFAULT 'open', answer text);
INSERT INTO app.tickets (status) VALUES ('closed');
"""
WORKFLOWS = '''
from orchestrator import Event, Next, Workflow

tickets = Workflow(
    "tickets", table="app.tickets", key="id", column="status",
    states=["open", "answered", "closed"], initial="open", terminal=["closed"],
    transitions=[{"trigger": "answer", "source": "open", "dest": "answered"},
                 {"trigger": "close", "source": "answered", "dest": "closed"}])


@tickets.on_enter("open")
def answer(event: Event) -> Next:
    return Next("answered", {"answer": f"thanks, {event.new_row['id'][:8]}"})


@tickets.on("open", "answered")
def close(event: Event) -> str:
    return "closed"
'''
# Every object of the user's the catalog knows, and every row of theirs.
CATALOG = """
SELECT kind, name FROM (
    SELECT 'relation' AS kind, n.nspname || '.' || c.relname AS name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'orchestrator')
      AND n.nspname NOT LIKE 'pg_toast%'
    UNION ALL
    SELECT 'trigger', c.relname || '.' || t.tgname FROM pg_trigger t
    JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal
    UNION ALL
    SELECT 'schema', nspname FROM pg_namespace WHERE nspname = 'orchestrator') objects
ORDER BY 1, 2
"""
ROWS = """
SELECT * FROM (SELECT 'orders' AS t, to_jsonb(o)::text AS r FROM public.orders o
               UNION ALL SELECT 'payments', to_jsonb(p)::text FROM public.payments p
               UNION ALL SELECT 'tickets', to_jsonb(k)::text FROM app.tickets k) rows
ORDER BY t, r
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with this checkout installed as a user installs it."""
    where = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    done = subprocess.run([str(where / "bin" / "pip"), "install", "--quiet", str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return where


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The user's folder: their workflows in package myapp, and nothing of ours."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "workflows.py").write_text(WORKFLOWS)
    return tmp_path


@pytest.fixture
def app_dsn(admin_dsn: str) -> Iterator[str]:
    with database.scratch_database(admin_dsn, "orch_user", APPLICATION) as dsn:
        yield dsn


def run(venv: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A command of the venv, in ``cwd``, with no checkout on its path and no ORCHESTRATOR_*
    settings from the test run."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("ORCHESTRATOR_", "PYTHON", "VIRTUAL_ENV"))
               and k != "DATABASE_URL"}
    environ["PATH"] = f"{venv / 'bin'}:{environ.get('PATH', '')}"
    return subprocess.run([*args], cwd=cwd, env=environ | env, capture_output=True,
                          text=True, timeout=240)


def read(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]


def test_the_install_is_one_package(venv: Path) -> None:
    site = next((venv / "lib").glob("python3*/site-packages"))
    record = next(site.glob("pg_orchestrator-*.dist-info")) / "RECORD"
    tops = {line.split("/", 1)[0] for line in record.read_text().splitlines()}
    # Besides its metadata and the `orchestrator` script (../../../bin), one package.
    assert {t for t in tops if not t.endswith(".dist-info") and t != ".."} == {"orchestrator"}
    for part in ("migrations/versions/0001_orchestrator_schema.py", "demo/files/seed.json",
                 "demo/files/schema.sql", "demo/handlers/food_order.py", "bench/queries.sql"):
        assert (site / "orchestrator" / part).is_file(), part
    imported = run(venv, Path(site.anchor), "python", "-c",
                   "import orchestrator.bench.run, orchestrator.demo; "
                   "print(orchestrator.__file__)")
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == str(site / "orchestrator" / "__init__.py")


def test_an_existing_application_migrates_runs_and_downgrades_untouched(
        venv: Path, project: Path, app_dsn: str) -> None:
    catalog, rows = read(app_dsn, CATALOG), read(app_dsn, ROWS)
    migrated = run(venv, project, "orchestrator", "migrate", "--handlers", "myapp.workflows",
                   "--dsn", app_dsn)
    assert migrated.returncode == 0, migrated.stderr
    assert "workflows installed: tickets" in migrated.stdout
    added = set(read(app_dsn, CATALOG)) - set(catalog)
    assert {kind for kind, _ in added} == {"schema", "trigger"}, added
    assert all(name.startswith("tickets.orchestrator_tickets_") for kind, name in added
               if kind == "trigger")

    with psycopg.connect(app_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO app.tickets DEFAULT VALUES")
        conn.execute("INSERT INTO app.tickets DEFAULT VALUES")
    done = run(venv, project, "orchestrator", "run", "--until-idle", "--handlers",
               "myapp.workflows", "--dsn", app_dsn, "--poll-interval-s", "0.2")
    assert done.returncode == 0, done.stderr
    assert read(app_dsn, "SELECT status, count(*), count(answer) FROM app.tickets "
                         "GROUP BY 1 ORDER BY 1") == [("closed", 3, 2)]
    assert read(app_dsn, "SELECT count(*) FROM orchestrator.events WHERE status = 'dead'") \
        == [(0,)]

    rows_after = read(app_dsn, ROWS)
    down = run(venv, project, "orchestrator", "migrate", "--downgrade", "base", "--dsn", app_dsn)
    assert down.returncode == 0, down.stderr
    assert read(app_dsn, CATALOG) == catalog
    assert read(app_dsn, ROWS) == rows_after
    assert [r for r in rows_after if r[0] != "tickets"] == [r for r in rows if r[0] != "tickets"]


def test_with_no_handlers_anywhere_one_line_says_what_to_pass(venv: Path, project: Path,
                                                              app_dsn: str) -> None:
    done = run(venv, project, "orchestrator", "run", "--dsn", app_dsn, "--log-level", "ERROR")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "no handlers to serve: pass --handlers" in done.stderr


def test_the_demo_runs_from_the_install(venv: Path, tmp_path: Path, admin_dsn: str) -> None:
    with database.scratch_database(admin_dsn, "orch_demo") as dsn:
        done = run(venv, tmp_path, "orchestrator", "demo", "--orders", "20", "--json",
                   "--dsn", dsn)
        assert done.returncode == 0, done.stderr
        assert read(dsn, "SELECT count(*) FROM orders WHERE status IN "
                         "('delivered', 'rejected', 'cancelled', 'failed')") == [(20,)]


ALEMBIC_ENV = '''
import os

import psycopg
from alembic import context
from sqlalchemy import create_engine

import orchestrator
from myapp.models import metadata

engine = create_engine("postgresql+psycopg://",
                       creator=lambda: psycopg.connect(os.environ["APP_DSN"]))
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata, include_schemas=True,
                      include_name=orchestrator.alembic_include_name)
    with context.begin_transaction():
        context.run_migrations()
'''
MODELS = '''
from sqlalchemy import Column, MetaData, Table, Text, text
from sqlalchemy.dialects.postgresql import UUID

metadata = MetaData()
Table("tickets", metadata,
      Column("id", UUID, primary_key=True, server_default=text("gen_random_uuid()")),
      Column("status", Text, nullable=False, server_default=text("'open'")),
      Column("answer", Text),
      schema="app")
'''
REVISION = '''
"""Tickets, with their workflow's triggers installed in the same transaction."""
from alembic import op

import orchestrator
from myapp.workflows import tickets

revision = "app_0001"
down_revision = None


def upgrade() -> None:
    op.execute("CREATE SCHEMA app")
    op.execute("""CREATE TABLE app.tickets (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        status text NOT NULL DEFAULT 'open', answer text)""")
    orchestrator.install_workflows(op.get_bind(), tickets)


def downgrade() -> None:
    op.execute("DROP SCHEMA app CASCADE")
'''


def test_an_application_with_its_own_alembic_history(venv: Path, project: Path,
                                                     admin_dsn: str) -> None:
    (project / "myapp" / "models.py").write_text(MODELS)
    (project / "migrations" / "versions").mkdir(parents=True)
    (project / "migrations" / "env.py").write_text(ALEMBIC_ENV)
    (project / "migrations" / "versions" / "app_0001.py").write_text(REVISION)
    (project / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    with database.scratch_database(admin_dsn, "orch_alembic") as dsn:
        env = {"APP_DSN": dsn, "PYTHONPATH": str(project)}
        # The orchestrator's schema first, then the application's history, in which a revision
        # creates a table and installs its workflow.
        schema_only = run(venv, project, "orchestrator", "migrate", "--schema-only", "--dsn", dsn)
        assert schema_only.returncode == 0, schema_only.stderr
        upgraded = run(venv, project, "alembic", "upgrade", "head", **env)
        assert upgraded.returncode == 0, upgraded.stderr
        assert read(dsn, "SELECT version_num FROM public.alembic_version") == [("app_0001",)]
        assert read(dsn, "SELECT name FROM orchestrator.workflows") == [("tickets",)]
        # Autogenerate sees the application's tables only: nothing to do.
        check = run(venv, project, "alembic", "check", **env)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "No new upgrade operations detected" in check.stdout + check.stderr

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO app.tickets DEFAULT VALUES")
        done = run(venv, project, "orchestrator", "run", "--until-idle", "--handlers",
                   "myapp.workflows", "--dsn", dsn, "--poll-interval-s", "0.2")
        assert done.returncode == 0, done.stderr
        assert read(dsn, "SELECT status FROM app.tickets") == [("closed",)]
        # `orchestrator migrate` later (new handlers) updates the same installation.
        again = run(venv, project, "orchestrator", "migrate", "--handlers", "myapp.workflows",
                    "--dsn", dsn)
        assert again.returncode == 0, again.stderr
