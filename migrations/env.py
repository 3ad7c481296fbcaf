"""Alembic environment: runs revisions on the connection `orchestrator migrate` hands over, or
on ORCHESTRATOR_DSN / DATABASE_URL when alembic is called directly."""

from __future__ import annotations

import os

import psycopg
from alembic import context
from sqlalchemy import Connection, create_engine, pool

from orchestrator.migrations import VERSION_SCHEMA, VERSION_TABLE


def _run(connection: Connection) -> None:
    # The version table lives in the orchestrator schema, which must exist before Alembic
    # creates that table; revision 0001 then finds it there.
    connection.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {VERSION_SCHEMA}")
    connection.commit()
    context.configure(connection=connection, version_table=VERSION_TABLE,
                      version_table_schema=VERSION_SCHEMA, transaction_per_migration=True)
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
