"""Alembic environment: runs revisions on the connection `orchestrator migrate` hands over, or
on ORCHESTRATOR_DSN / DATABASE_URL when alembic is called directly."""

from __future__ import annotations

import os

import psycopg
from alembic import context
from sqlalchemy import create_engine, pool

VERSION_TABLE = "orchestrator_alembic_version"


def _run(connection: object) -> None:
    context.configure(connection=connection, version_table=VERSION_TABLE,
                      transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    dsn = os.environ.get("ORCHESTRATOR_DSN") or os.environ["DATABASE_URL"]
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn),
                           poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
