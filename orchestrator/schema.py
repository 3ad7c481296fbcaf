"""Database schema: Alembic revisions (``migrations/``) and each workflow's triggers.

``migrate`` upgrades to the newest revision, then installs every workflow of the registry: its
row in ``orchestrator.workflows``, its legal transitions, and its guard and capture triggers.
A session advisory lock makes concurrent migrations take turns.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, pool

import migrations
from orchestrator import db
from orchestrator.registry import Registry
from orchestrator.sql import QUERIES
from orchestrator.store import Store

if TYPE_CHECKING:
    from orchestrator.credentials import PasswordProvider

MIGRATIONS_DIR = Path(migrations.__file__).parent
VERSION_TABLE = "orchestrator_alembic_version"


def _config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def _run(dsn: str, action: str, revision: str, password: PasswordProvider | None) -> None:
    engine = create_engine("postgresql+psycopg://",
                           creator=lambda: db.connect(dsn, password=password),
                           poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(QUERIES["migrate_lock"])
            conn.commit()
            getattr(command, action)(_config(conn), revision)
    finally:
        engine.dispose()


def upgrade(dsn: str, revision: str = "head", *,
            password: PasswordProvider | None = None) -> None:
    """Apply revisions up to ``revision``."""
    _run(dsn, "upgrade", revision, password)


def downgrade(dsn: str, revision: str = "base", *,
              password: PasswordProvider | None = None) -> None:
    """Revert revisions down to ``revision`` (``base``: remove everything)."""
    _run(dsn, "downgrade", revision, password)


def current_revision(dsn: str, *, password: PasswordProvider | None = None) -> str | None:
    """The revision the database is at, or None before the first migration."""
    engine = create_engine("postgresql+psycopg://",
                           creator=lambda: db.connect(dsn, password=password),
                           poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    assert head is not None
    return head


def install_workflows(store: Store, registry: Registry) -> list[str]:
    """Install (or update) every workflow of ``registry``; their names."""
    for wf in registry.workflows.values():
        store.install_workflow(wf)
    return sorted(registry.workflows)
