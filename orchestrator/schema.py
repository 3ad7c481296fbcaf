"""Database schema: Alembic revisions of the orchestrator's own schema, and each workflow's
triggers.

``upgrade`` brings the ``orchestrator`` schema to the newest revision (Alembic keeps its version
in ``orchestrator.alembic_version``); ``install_registry`` then installs every workflow of a
registry, and ``install_workflows`` does it in an application's own transaction. Nothing
outside the ``orchestrator`` schema is created or changed, except the triggers installed on
workflow tables, which ``downgrade`` to ``base`` removes with the schema. A session
advisory lock makes concurrent migrations take turns. Errors leave as one-line MigrationError.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from psycopg_pool import ConnectionPool
from sqlalchemy import Connection, create_engine, pool

import orchestrator.migrations
from orchestrator import db, install
from orchestrator.errors import MigrationError, OrchestratorError
from orchestrator.migrations import VERSION_SCHEMA, VERSION_TABLE
from orchestrator.registry import Registry
from orchestrator.sql import INSTALL
from orchestrator.workflow import Workflow

if TYPE_CHECKING:
    from orchestrator.credentials import PasswordProvider

MIGRATIONS_DIR = Path(orchestrator.migrations.__file__).parent
VERSION_OPTIONS = {"version_table": VERSION_TABLE, "version_table_schema": VERSION_SCHEMA}


def upgrade(dsn: str, revision: str = "head", *,
            password: PasswordProvider | None = None) -> None:
    """Apply revisions up to ``revision``. Raises MigrationError (one line) on failure."""
    with _connection(dsn, password) as conn:
        _adopt_old_version_table(conn)
        command.upgrade(_config(conn), revision)


def downgrade(dsn: str, revision: str = "base", *,
              password: PasswordProvider | None = None) -> bool:
    """Revert revisions down to ``revision``; ``base`` removes the orchestrator schema and the
    triggers on workflow tables, leaving those tables and their rows as they are. False when
    there is no orchestrator schema (nothing done)."""
    with _connection(dsn, password) as conn:
        if not conn.exec_driver_sql(INSTALL["schema_exists"]).scalar():
            return False  # nothing to revert, and no schema to make for Alembic's version
        _adopt_old_version_table(conn)
        command.downgrade(_config(conn), revision)
        if revision == "base":
            conn.exec_driver_sql(INSTALL["drop_schema"])
            conn.commit()
    return True


def current_revision(dsn: str, *, password: PasswordProvider | None = None) -> str | None:
    """The revision the database is at, or None before the first migration."""
    with _connection(dsn, password, lock=False) as conn:
        context = MigrationContext.configure(conn, opts=dict(VERSION_OPTIONS))
        return context.get_current_revision()


def head_revision() -> str:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    assert head is not None
    return head


def install_registry(work_pool: ConnectionPool, registry: Registry) -> list[str]:
    """Install (or update) every workflow of ``registry``, each in its own transaction; their
    names."""
    for wf in registry.workflows.values():
        with db.borrowed(work_pool) as conn, db.translated(conn), conn.transaction():
            install.install_workflow(conn, wf)
    return sorted(registry.workflows)


def install_workflows(connection: Any, *workflows: Workflow) -> None:
    """Install or update ``workflows`` inside the caller's open transaction: for an
    application's own Alembic revision (``install_workflows(op.get_bind(), tickets)``), right after
    it creates the workflow's table. ``connection`` is a SQLAlchemy Connection on the
    ``postgresql+psycopg`` driver, or a psycopg connection. The orchestrator schema must be
    migrated first (NotMigrated otherwise); DefinitionError for a missing table or column."""
    raw = getattr(getattr(connection, "connection", None), "driver_connection", connection)
    if not db.is_psycopg(raw):
        raise OrchestratorError("install_workflows() needs a psycopg 3 connection: use the "
                                "postgresql+psycopg:// driver")
    with db.translated(raw):
        for wf in workflows:
            install.install_workflow(raw, wf)


def alembic_include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """An ``include_name`` hook for an application's Alembic autogenerate: leave the
    orchestrator schema (its tables and version table) out of the comparison. Pass it to
    ``context.configure(..., include_schemas=True, include_name=alembic_include_name)``; without
    include_schemas, autogenerate never looks at other schemas anyway."""
    if type_ == "schema":
        return name != VERSION_SCHEMA
    return True


def _config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


@contextmanager
def _connection(dsn: str, password: PasswordProvider | None, *,
                lock: bool = True) -> Iterator[Connection]:
    """A SQLAlchemy connection for Alembic, holding the migration lock; failures of Alembic
    or the database leave as one-line MigrationError (DatabaseUnavailable when unreachable)."""
    engine = create_engine("postgresql+psycopg://",
                           creator=lambda: db.connect(dsn, password=password),
                           poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            if lock:
                conn.exec_driver_sql(INSTALL["migrate_lock"])
                conn.commit()
            yield conn
    except OrchestratorError:
        raise
    except CommandError as exc:
        raise MigrationError(f"migration failed: {db.one_line(exc)}") from exc
    except sqlalchemy.exc.DBAPIError as exc:
        cause = exc.orig if exc.orig is not None else exc
        raise MigrationError(f"migration failed: {db.one_line(cause)}") from exc
    finally:
        engine.dispose()


def _adopt_old_version_table(conn: Connection) -> None:
    """Builds before 0.1.0 kept Alembic's version in public.orchestrator_alembic_version: move
    it into the orchestrator schema, where migrations/env.py looks for it now."""
    conn.exec_driver_sql(INSTALL["adopt_old_version_table"])
    conn.commit()
