"""Witnesses for the exactly-once promises, kept where a double could not hide.

The fault bench and the fault tests count doubles here rather than in what the engine writes
about itself, or in tables whose constraints would refuse a double before it could be counted:

- ``witness_state_writes``: every UPDATE that sets a watched table's state column, recorded by
  a trigger whether or not the value changed. A compare-and-set repeated on a row already in
  its target state records no event, but it records a row here.
- ``witness_executions``: every call of a wrapped handler, recorded on a connection of its own
  before the handler runs, so outside the handler's transaction: a run whose transaction rolled
  back (or whose process died) still counts. Handlers run at least once; this shows how often.
- ``witness_effects``: a row written by every call of a wrapped handler through ``ctx.db``, in
  the handler's transaction, with no UNIQUE constraint: one row per finished event, from the
  attempt and process that held its claim, or a double shows.
- ``CHARGES_NOT_ONCE``: the food-order demo's payments against the events that charged. The
  demo's ``payments`` table has no UNIQUE constraint, so a second commit of a charge would be a
  second row, here.
"""

from __future__ import annotations

import os
import threading
from contextlib import suppress
from typing import Any

import psycopg
from psycopg import sql

SCHEMA = """
CREATE TABLE IF NOT EXISTS public.witness_state_writes (
    table_name text        NOT NULL,
    row_key    text        NOT NULL,
    old_state  text,
    new_state  text,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS public.witness_executions (
    event_id bigint      NOT NULL,
    handler  text        NOT NULL,
    attempt  integer     NOT NULL,
    pid      integer     NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS public.witness_effects (
    event_id bigint  NOT NULL,
    attempt  integer NOT NULL,
    pid      integer NOT NULL
);
-- SECURITY DEFINER: the dispatchers' least-privilege role writes the watched tables, not this.
CREATE OR REPLACE FUNCTION public.witness_state_write_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    INSERT INTO public.witness_state_writes (table_name, row_key, old_state, new_state)
    VALUES (TG_TABLE_NAME, to_jsonb(NEW) ->> TG_ARGV[0], to_jsonb(OLD) ->> TG_ARGV[1],
            to_jsonb(NEW) ->> TG_ARGV[1]);
    RETURN NULL;
END
$$;
"""

# No FOR EACH ROW ... WHEN clause: a write that leaves the state as it was is recorded too.
WATCH = """
CREATE OR REPLACE TRIGGER witness_state_writes AFTER UPDATE OF {column} ON {table}
FOR EACH ROW EXECUTE FUNCTION public.witness_state_write_v1({key}, {column_name})
"""

# Writes of a state that applied a transition twice: a write that left the state as it was
# (a repeated compare-and-set), or, in a workflow without cycles, a row entering a state a
# second time.
STATES_WRITTEN_TWICE = """
SELECT table_name, row_key, new_state, count(*) AS writes
FROM public.witness_state_writes
GROUP BY table_name, row_key, new_state
HAVING count(*) > 1 OR bool_or(old_state IS NOT DISTINCT FROM new_state)
ORDER BY 1, 2, 3
"""

# Food-order events a wrapped handler finished (applied or noop) with no recorded execution of
# the attempt that finished them.
UNEXECUTED = """
SELECT e.id, e.handler, e.attempts
FROM orchestrator.event_log e
WHERE e.workflow = 'food_order' AND e.status = 'done' AND e.outcome IN ('applied', 'noop')
  AND e.handler IS NOT NULL AND e.handler <> 'deadline'
  AND NOT EXISTS (SELECT FROM public.witness_executions x
                  WHERE x.event_id = e.id AND x.attempt = e.attempts)
ORDER BY e.id
"""

# Food-order events whose rows in witness_effects are not what their end allows: one, written
# by the attempt (and process) that held the claim, when a wrapped handler's transaction
# committed (the event applied or did nothing); none otherwise.
EFFECTS_NOT_ONCE = """
SELECT e.id, e.status, e.outcome, e.attempts, e.claimed_by,
       array_agg(f.attempt || '@' || f.pid) FILTER (WHERE f.event_id IS NOT NULL)
FROM orchestrator.event_log e LEFT JOIN public.witness_effects f ON f.event_id = e.id
WHERE e.workflow = 'food_order'
GROUP BY e.id, e.status, e.outcome, e.attempts, e.claimed_by, e.handler
HAVING count(f.event_id) <> CASE WHEN e.status = 'done' AND e.outcome IN ('applied', 'noop')
                                      AND e.handler <> 'deadline' THEN 1 ELSE 0 END
    OR bool_or(f.attempt <> e.attempts
               OR f.pid <> split_part(e.claimed_by, ':', 2)::integer)
ORDER BY e.id
"""

# The demo's charges against its payments: each charge event that applied 'paid' has exactly
# one payment under its idempotency key, every other charge event none, and no payment is
# anyone else's.
CHARGES_NOT_ONCE = """
WITH charges AS (
    SELECT e.id, e.row_key::bigint AS order_id, e.workflow || ':' || e.id AS idempotency_key,
           (e.status = 'done' AND e.outcome = 'applied' AND e.next_state = 'paid') AS paid
    FROM orchestrator.event_log e
    WHERE e.workflow = 'food_order' AND e.op = 'UPDATE' AND e.column_name = 'status'
      AND e.old_value = 'placed' AND e.new_value = 'validated'
)
SELECT c.order_id, c.id AS event_id, c.paid, count(p.id) AS payments
FROM charges c LEFT JOIN public.payments p ON p.idempotency_key = c.idempotency_key
GROUP BY c.order_id, c.id, c.paid
HAVING count(p.id) <> CASE WHEN c.paid THEN 1 ELSE 0 END
UNION ALL
SELECT p.order_id, NULL, NULL, count(*)
FROM public.payments p
WHERE NOT EXISTS (SELECT FROM charges c WHERE c.idempotency_key = p.idempotency_key)
GROUP BY p.order_id
ORDER BY 1
"""

EXECUTIONS_DSN_ENV = "WITNESS_DSN"


def install(conn: psycopg.Connection[Any], tables: dict[str, tuple[str, str]]) -> None:
    """Create the witness tables and watch ``tables``: {table: (key column, state column)}."""
    conn.execute(SCHEMA)
    for table, (key, column) in tables.items():
        schema, _, name = table.rpartition(".")
        conn.execute(sql.SQL(WATCH).format(
            table=sql.Identifier(schema or "public", name), column=sql.Identifier(column),
            key=sql.Literal(key), column_name=sql.Literal(column)))


class Executions:
    """Records handler calls in ``witness_executions`` on a connection per thread, outside any
    handler's transaction, and their effect in ``witness_effects`` inside it. ``record``
    raises when the database cannot be reached: the call then fails before the handler runs,
    so no effect can commit unrecorded. Without a DSN it records nothing."""

    def __init__(self, dsn: str | None = None) -> None:
        self.dsn = dsn if dsn is not None else os.environ.get(EXECUTIONS_DSN_ENV)
        self._local = threading.local()

    def record(self, event_id: int, handler: str, attempt: int,
               handler_db: psycopg.Connection[Any]) -> None:
        """Record a call (now, on a connection of its own) and its effect (through
        ``handler_db``, the handler's ``ctx.db``: it commits with the handler's outcome)."""
        if not self.dsn:
            return
        self._record_call(event_id, handler, attempt)
        handler_db.execute("INSERT INTO public.witness_effects (event_id, attempt, pid)"
                           " VALUES (%s, %s, %s)", (event_id, attempt, os.getpid()))

    def _record_call(self, event_id: int, handler: str, attempt: int) -> None:
        params = (event_id, handler, attempt, os.getpid())
        query = ("INSERT INTO public.witness_executions (event_id, handler, attempt, pid)"
                 " VALUES (%s, %s, %s, %s)")
        try:
            self._connection().execute(query, params)
        except psycopg.OperationalError:  # the server restarted since: once more, afresh
            with suppress(psycopg.Error):
                self._local.conn.close()
            self._local.conn = None
            self._connection().execute(query, params)

    def _connection(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg.connect(self.dsn or "", autocommit=True, connect_timeout=5)
            self._local.conn = conn
        return conn
