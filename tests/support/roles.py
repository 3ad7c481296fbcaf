"""Login roles for a test, members of the migration's least-privilege dispatcher role."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import conninfo, sql

# What the test workflows (tests.support.jobs and tickets) need beyond the migration's grants.
TEST_GRANTS = """
GRANT SELECT, UPDATE ON jobs, tickets TO orchestrator_dispatcher;
GRANT INSERT ON job_effects TO orchestrator_dispatcher;
"""


@contextmanager
def dispatcher_role(dsn: str, *, connection_limit: int = -1) -> Iterator[str]:
    """A login role in ``orchestrator_dispatcher`` (unique name, dropped afterwards); yields
    ``dsn`` with that role as its user."""
    name = f"orch_disp_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT {} IN ROLE "
                             "orchestrator_dispatcher").format(
            sql.Identifier(name), sql.Literal(connection_limit)))
        conn.execute(TEST_GRANTS)
    try:
        yield conninfo.make_conninfo(dsn, user=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                 " WHERE usename = {}").format(sql.Literal(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
