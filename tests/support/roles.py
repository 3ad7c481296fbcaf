"""Login roles for a test: members of the migration's group roles, or plain ones with only the
grants a test gives them."""

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
def login_role(dsn: str, *, prefix: str = "orch_role", member_of: str | None = None,
               connection_limit: int = -1, grants: str = "") -> Iterator[str]:
    """A login role with a unique name, in group role ``member_of`` if given; ``grants`` is
    SQL run as the superuser first, ``{role}`` standing for the role's name. Yields ``dsn``
    with that role as its user; ends its sessions and drops it (and what it owns) afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    role = sql.Identifier(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT {}").format(
            role, sql.Literal(connection_limit)))
        if member_of:
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(member_of), role))
        if grants:
            conn.execute(grants.replace("{role}", role.as_string(conn)))  # type: ignore[arg-type]
    try:
        yield conninfo.make_conninfo(dsn, user=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                 " WHERE usename = {}").format(sql.Literal(name)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
            conn.execute(sql.SQL("DROP ROLE {}").format(role))


@contextmanager
def dispatcher_role(dsn: str, *, connection_limit: int = -1) -> Iterator[str]:
    """A login role in ``orchestrator_dispatcher`` (unique name, dropped afterwards); yields
    ``dsn`` with that role as its user."""
    with login_role(dsn, prefix="orch_disp", member_of="orchestrator_dispatcher",
                    connection_limit=connection_limit, grants=TEST_GRANTS) as role_dsn:
        yield role_dsn
