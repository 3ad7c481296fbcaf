"""Where a transition's WAL goes, by relation, today and in candidate designs of the queue.

`python -m bench.walsplit [--dsn DSN] [--orders N] [--rounds R] [--variants a,b,c]` (default:
the embedded server) makes one scratch database per variant (the bench's tables and workflows,
revisions to head), then runs interleaved rounds: per round and variant, a CHECKPOINT, then a
window in which N bench orders are placed in one transaction and walked to their terminal
state (6 transitions each) with the engine's statements, one dispatcher's worth (claims of
``--batch``, write-backs of a batch with the hand-over claim in the same transaction), ending
when every finished event is where the design keeps its history. Per window: WAL bytes per
transition by relation and by record type (pg_walinspect, the variant's database only), full
page images apart, and transitions/s of the SQL alone; after it, outside the window, the WAL
of a VACUUM of the design's tables. A first round warms up and is not reported.

Variants (each runs the installed triggers of the bench's workflow, as `orchestrator migrate`
makes them: capture_v4, the guard of UPDATEs an AFTER trigger):
  a0 a with the guard of UPDATEs a BEFORE trigger (as before 2026-12-01).
  a  today: the engine's own statements, composed by its Store; at the end of the window the
     finished events move to the history (archive_v1), as the bench does.
  b  a narrow queue of open events (``orchestrator.open``: id, row, status, lease, attempts,
     run_after; only the primary key and a (workflow, row_key, id) index, so claim and finish
     never change an indexed column) beside a time-partitioned log written once at capture
     with the event's content (``orchestrator.log``); the finish deletes the queue row (the
     delete is the fencing lock) and records the outcome in the log row (mutable columns
     last, so the same-page update logs only them); no archive step.
  c  b with ``old_row`` stored as the columns that differ from ``new_row`` (read back exactly
     as ``new_row || old_diff``: OLD and NEW of one trigger call have the same columns).
  d  c with the outcome in a narrow table of its own (``orchestrator.outcomes``) instead of an
     update of the log row (the log's pages then need no room for a second version).
  e  c with the log's rows found by (workflow, row_key, id) (its id index a BRIN) and
     old_value / new_value read from the rows instead of stored.
  g  e with the log's fillfactor 40 instead of 50 (room for every outcome's version).
  e0, g0  e and g with the guard of UPDATEs a BEFORE trigger, as on main.
  i  g with a btree on the log's id again (what a newest-first list of events needs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import conninfo, sql
from psycopg_pool import ConnectionPool

from orchestrator.app import resolve_dsn
from orchestrator.bench.run import prepare
from orchestrator.bench.workflow import NEXT, TRANSITIONS_PER_ORDER, bench_order
from orchestrator.config import Settings
from orchestrator.dispatcher import dispatcher_name
from orchestrator.sql import QUERIES
from orchestrator.store import CLAIM_KINDS, Store

DISPATCHER = dispatcher_name()  # as long as a real dispatcher's: host:pid:hex
HANDLER = "orchestrator.bench.workflow.advance"  # the name the engine records for it
LEASE_S = 30.0

PLACE = """
INSERT INTO public.bench_orders (customer_id, total_cents)
SELECT g, 1000 + g %% 5000 FROM generate_series(1, %(n)s) g
"""

# -- the candidates' schema ----------------------------------------------------------------------

OPEN_TABLE = """
CREATE TABLE orchestrator.open (
    id          bigint      PRIMARY KEY,
    workflow    text        NOT NULL,
    row_key     text        NOT NULL,
    created_at  timestamptz NOT NULL,
    timer       boolean     NOT NULL DEFAULT false,
    suspect     boolean     NOT NULL DEFAULT false,
    run_after   timestamptz NOT NULL DEFAULT now(),
    status      text        NOT NULL DEFAULT 'pending',
    attempts    integer     NOT NULL DEFAULT 0,
    lease_until timestamptz,
    claimed_by  text,
    started_at  timestamptz
) WITH (fillfactor = 50);
CREATE INDEX open_row ON orchestrator.open (workflow, row_key, id);
CREATE INDEX open_timers ON orchestrator.open (run_after) WHERE timer;
"""

LOG_TABLE = """
CREATE SEQUENCE orchestrator.log_seq;
CREATE TABLE orchestrator.log (
    id                bigint      NOT NULL,
    created_at        timestamptz NOT NULL,
    workflow          text        NOT NULL,
    row_key           text        NOT NULL,
    column_name       text        NOT NULL,
    op                text        NOT NULL,{value_columns}
    session_variables jsonb,
    {old_column}      jsonb,
    new_row           jsonb       NOT NULL,
    status            text        NOT NULL DEFAULT 'pending'{outcome_columns}
) PARTITION BY RANGE (created_at);
CREATE TABLE orchestrator.log_today PARTITION OF orchestrator.log
    FOR VALUES FROM (now() - interval '1 day') TO (now() + interval '1 day')
    WITH (fillfactor = {fillfactor});
CREATE INDEX log_id ON orchestrator.log {id_index};
CREATE INDEX log_row ON orchestrator.log (workflow, row_key, id);
"""

OUTCOME_COLUMNS = """,
    attempts          integer,
    handler           text,
    outcome           text,
    next_state        text,
    last_error        text,
    started_at        timestamptz,
    finished_at       timestamptz"""

OUTCOMES_TABLE = """
CREATE TABLE orchestrator.outcomes (
    id          bigint      NOT NULL,
    created_at  timestamptz NOT NULL,
    status      text        NOT NULL,
    attempts    integer     NOT NULL,
    handler     text,
    outcome     text,
    next_state  text,
    last_error  text,
    started_at  timestamptz,
    finished_at timestamptz NOT NULL
) PARTITION BY RANGE (finished_at);
CREATE TABLE orchestrator.outcomes_today PARTITION OF orchestrator.outcomes
    FOR VALUES FROM (now() - interval '1 day') TO (now() + interval '1 day');
CREATE INDEX outcomes_id ON orchestrator.outcomes (id);
"""

# capture_v4's body (session variables, unserved arrivals, NOTIFY), writing the log and the
# queue instead of the events table; the deadline branch is left out (the bench has none).
CAPTURE = """
CREATE OR REPLACE FUNCTION orchestrator.capture_v4() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_data jsonb := pg_catalog.to_jsonb(NEW);
    old_data jsonb;
    unserved boolean;
    raw text := coalesce(
        nullif(pg_catalog.current_setting('orchestrator.session', true), ''),
        nullif(pg_catalog.current_setting('hasura.user', true), ''));
    session jsonb;
    new_id bigint := pg_catalog.nextval('orchestrator.log_seq');
    at timestamptz := pg_catalog.clock_timestamp();
BEGIN
    IF raw IS NOT NULL THEN
        session := raw::jsonb;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        {old_data}
    END IF;
    unserved := coalesce(TG_NARGS > 4
                         AND (new_data ->> TG_ARGV[2]) = ANY (TG_ARGV[4:TG_NARGS - 1]), false);
    IF unserved THEN
        {unserved_insert}
    ELSE
        INSERT INTO orchestrator.log
            (id, created_at, workflow, row_key, column_name, op,{value_names}
             session_variables, {old_column}, new_row)
        VALUES
            (new_id, at, TG_ARGV[0], new_data ->> TG_ARGV[1], TG_ARGV[2], TG_OP,{values}
             session, old_data, new_data);
        INSERT INTO orchestrator.open (id, workflow, row_key, created_at)
        VALUES (new_id, TG_ARGV[0], new_data ->> TG_ARGV[1], at);
    END IF;
    IF NOT unserved
       AND pg_catalog.current_setting('orchestrator.quiet', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_catalog.pg_notify('orchestrator', '');
    END IF;
    RETURN NULL;
END
$$;
"""

OLD_FULL = "old_data := pg_catalog.to_jsonb(OLD);"
# Only the columns whose value differs from NEW's: old_row is new_row || old_diff.
OLD_DIFF = """SELECT coalesce(pg_catalog.jsonb_object_agg(o.key, o.value), '{}'::jsonb)
        INTO old_data
        FROM pg_catalog.jsonb_each(pg_catalog.to_jsonb(OLD)) AS o (key, value)
        WHERE (new_data -> o.key)::text IS DISTINCT FROM o.value::text;"""

UNSERVED_IN_LOG = """INSERT INTO orchestrator.log
            (id, created_at, workflow, row_key, column_name, op,{value_names}
             session_variables, {old_column}, new_row, status, outcome, finished_at)
        VALUES
            (new_id, at, TG_ARGV[0], new_data ->> TG_ARGV[1], TG_ARGV[2], TG_OP,{values}
             session, old_data, new_data, 'done', 'no_handler', at);"""

UNSERVED_APART = """INSERT INTO orchestrator.log
            (id, created_at, workflow, row_key, column_name, op,{value_names}
             session_variables, {old_column}, new_row, status)
        VALUES
            (new_id, at, TG_ARGV[0], new_data ->> TG_ARGV[1], TG_ARGV[2], TG_OP,{values}
             session, old_data, new_data, 'done');
        INSERT INTO orchestrator.outcomes (id, created_at, status, attempts, outcome,
                                           finished_at)
        VALUES (new_id, at, 'done', 0, 'no_handler', at);"""

# -- the candidates' statements ------------------------------------------------------------------

CONTENT = """
SELECT l.id, l.workflow, l.row_key, l.column_name, l.op, {old_value}, {new_value},
       {old_row}, l.new_row, c.attempts, l.created_at, l.session_variables
FROM claimed c JOIN orchestrator.log l ON l.id = c.id AND l.created_at = c.created_at{by_row}
"""

CLAIM = """
WITH picked AS (
    SELECT o.id
    FROM orchestrator.open o
    WHERE o.status = 'pending' AND NOT o.timer AND NOT o.suspect
      AND o.run_after <= now()
      AND o.workflow = ANY(%(workflows)s)
      AND NOT EXISTS (
          SELECT 1 FROM orchestrator.open p
          WHERE p.workflow = o.workflow AND p.row_key = o.row_key AND p.id < o.id
            AND (NOT p.timer OR p.status = 'running'))
    ORDER BY o.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE orchestrator.open o
    SET status = 'running', attempts = o.attempts + 1, claimed_by = %(dispatcher)s,
        lease_until = now() + make_interval(secs => %(lease_s)s), started_at = now()
    FROM picked
    WHERE o.id = picked.id
    RETURNING o.id, o.created_at, o.attempts, o.workflow, o.row_key
)""" + CONTENT

HAND_OVER = """
WITH claimed AS (
    UPDATE orchestrator.open e
    SET status = 'running', attempts = e.attempts + 1, claimed_by = %(dispatcher)s,
        lease_until = now() + make_interval(secs => %(lease_s)s), started_at = now()
    WHERE NOT e.suspect AND e.id = ANY (ARRAY(
            SELECT n.id
            FROM unnest(%(workflows)s::text[], %(keys)s::text[]) AS r (workflow, row_key)
            CROSS JOIN LATERAL (
                SELECT min(p.id) AS id, bool_and(p.status = 'pending') AS free
                FROM orchestrator.open p
                WHERE p.workflow = r.workflow AND p.row_key = r.row_key
                  AND (NOT p.timer OR p.status = 'running')) AS n
            WHERE n.free))
      AND e.status = 'pending'
      AND e.run_after <= now()
    RETURNING e.id, e.created_at, e.attempts, e.workflow, e.row_key
)""" + CONTENT

WRITE_BACK_HEAD = """
WITH f AS MATERIALIZED (
    SELECT *
    FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(keys)s::bigint[],
                %(statuses)s::text[], %(outcomes)s::text[], %(stale_outcomes)s::text[],
                %(handlers)s::text[], %(next_states)s::text[], %(errors)s::text[],
                %(e_0)s::text[], %(v_0)s::text[])
         AS f(id, attempt, key, status, outcome, stale_outcome, handler, next_state, error,
              e_0, v_0)
), gone AS (
    DELETE FROM orchestrator.open o
    USING f
    WHERE o.id = f.id AND o.attempts = f.attempt AND o.claimed_by = %(dispatcher)s
      AND o.status = 'running'
    RETURNING o.id, o.created_at, o.attempts, o.started_at, o.workflow, o.row_key
), moved AS (
    UPDATE public.bench_orders AS t SET status = f.v_0::text
    FROM f JOIN gone USING (id)
    WHERE t.id = f.key AND t.status IS NOT DISTINCT FROM f.e_0::text
    RETURNING f.id
)"""

WRITE_BACK_IN_LOG = WRITE_BACK_HEAD.replace("{", "{{").replace("}", "}}") + """
UPDATE orchestrator.log l
SET status = f.status,
    outcome = CASE WHEN f.id IN (SELECT id FROM moved) THEN f.outcome ELSE f.stale_outcome END,
    attempts = g.attempts, handler = f.handler, next_state = f.next_state,
    last_error = f.error, started_at = g.started_at, finished_at = now()
FROM f JOIN gone g USING (id)
WHERE l.id = f.id AND l.created_at = g.created_at{by_row}
RETURNING l.id, l.outcome
"""

WRITE_BACK_APART = WRITE_BACK_HEAD + """
INSERT INTO orchestrator.outcomes AS o
    (id, created_at, status, attempts, handler, outcome, next_state, last_error, started_at,
     finished_at)
SELECT f.id, g.created_at, f.status, g.attempts, f.handler,
       CASE WHEN f.id IN (SELECT id FROM moved) THEN f.outcome ELSE f.stale_outcome END,
       f.next_state, f.error, g.started_at, now()
FROM f JOIN gone g USING (id)
RETURNING o.id, o.outcome
"""


@dataclass
class Variant:
    """A design: its setup in a fresh bench database and the statements one dispatcher runs."""

    name: str
    claim: bytes | str = ""
    write_back: bytes | str = ""
    hand_over: bytes | str = ""
    end: str | None = None
    vacuum: str = ""
    dsn: str = ""
    rounds: list[dict[str, Any]] = field(default_factory=list)


def today(conn: psycopg.Connection[Any], dsn: str, v: Variant) -> None:
    """The engine's statements, composed by its own Store (claim, write-back, hand-over)."""
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        store = Store(pool, dispatcher=DISPATCHER, lease_s=LEASE_S)
        store.use_workflows([bench_order])
        with pool.connection() as c:
            v.write_back = store._write_back_sql(bench_order, ("status",), ("status",), c)
            v.claim = sql.SQL(QUERIES["claim"]).format(
                kind=sql.SQL(CLAIM_KINDS["plain"][0]),
                order=sql.SQL(CLAIM_KINDS["plain"][1])).as_bytes(c)
    v.hand_over = QUERIES["claim_next_of_rows"]
    v.end = "SELECT orchestrator.archive_v1(now() + interval '1 minute', NULL, true, '1 hour')"
    v.vacuum = "VACUUM orchestrator.events, public.bench_orders"


# The guard of UPDATEs as main (5f6c98a) installs it: a BEFORE trigger, which has PostgreSQL
# lock the row before it runs.
BEFORE_GUARD = """
CREATE OR REPLACE TRIGGER orchestrator_bench_order_guard_update
    BEFORE UPDATE OF status ON public.bench_orders
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION orchestrator.guard_v2('bench_order', 'status');
"""


@dataclass(frozen=True)
class Design:
    """A narrow queue beside a log written once, and what else changes: ``diff``, old_row as the
    columns that differ from new_row; ``apart``, the outcome in a table of its own; ``by_row``,
    the log's rows found through its (workflow, row_key, id) index, its id index a BRIN;
    ``values``, old_value and new_value stored (else read from the rows); ``before_guard``, the
    workflow's guard of UPDATEs a BEFORE trigger, as on main (it locks the row first);
    ``log_fillfactor``, room left in the log's pages for the outcome's version of a row;
    ``id_btree``, the log's id index a btree even when its rows are found by row."""

    diff: bool = False
    apart: bool = False
    by_row: bool = False
    values: bool = True
    before_guard: bool = False
    log_fillfactor: int = 50
    id_btree: bool = False


def candidate(d: Design) -> Callable[[psycopg.Connection[Any], str, Variant], None]:
    old_column = "old_diff" if d.diff else "old_row"
    old_data = "(new_data || old_data)" if d.diff else "old_data"
    old_row = ("CASE WHEN l.op = 'INSERT' THEN NULL ELSE l.new_row || l.old_diff END"
               if d.diff else "l.old_row")
    if d.values:
        value_names = " old_value, new_value,"
        values = f" {old_data} ->> TG_ARGV[2], new_data ->> TG_ARGV[2],"
        read = {"old_value": "l.old_value", "new_value": "l.new_value"}
    else:
        value_names = values = ""
        read = {"old_value": f"({old_row}) ->> l.column_name AS old_value",
                "new_value": "l.new_row ->> l.column_name AS new_value"}
    by_row = " AND l.workflow = c.workflow AND l.row_key = c.row_key" if d.by_row else ""
    names = {"old_column": old_column, "value_names": value_names, "values": values}

    def setup(conn: psycopg.Connection[Any], dsn: str, v: Variant) -> None:
        conn.execute(OPEN_TABLE)
        conn.execute(LOG_TABLE.format(
            old_column=old_column, outcome_columns="" if d.apart else OUTCOME_COLUMNS,
            fillfactor=100 if d.apart else d.log_fillfactor,
            value_columns="\n    old_value text,\n    new_value text," if d.values else "",
            id_index="USING brin (id)" if d.by_row and not d.id_btree else "(id)"))
        if d.apart:
            conn.execute(OUTCOMES_TABLE)
        unserved = (UNSERVED_APART if d.apart else UNSERVED_IN_LOG).format(**names)
        conn.execute(CAPTURE.format(old_data=OLD_DIFF if d.diff else OLD_FULL,
                                    unserved_insert=unserved, **names))
        if d.before_guard:
            conn.execute(BEFORE_GUARD)
        v.claim = CLAIM.format(old_row=old_row + " AS old_row", by_row=by_row, **read)
        v.hand_over = HAND_OVER.format(old_row=old_row + " AS old_row", by_row=by_row, **read)
        v.write_back = (WRITE_BACK_APART if d.apart else WRITE_BACK_IN_LOG.format(
            by_row=by_row.replace("c.", "g.")))
        v.vacuum = ("VACUUM orchestrator.open, orchestrator.log, public.bench_orders"
                    + (", orchestrator.outcomes" if d.apart else ""))

    return setup


def before_guard(conn: psycopg.Connection[Any], dsn: str, v: Variant) -> None:
    """Today's schema and statements with the guard of UPDATEs a BEFORE trigger."""
    today(conn, dsn, v)
    conn.execute(BEFORE_GUARD)


def variants() -> dict[str, Callable[[psycopg.Connection[Any], str, Variant], None]]:
    lean = Design(diff=True, by_row=True, values=False)
    return {"a0": before_guard, "a": today, "b": candidate(Design()),
            "c": candidate(Design(diff=True)), "d": candidate(Design(diff=True, apart=True)),
            "e": candidate(lean), "g": candidate(replace(lean, log_fillfactor=40)),
            "e0": candidate(replace(lean, before_guard=True)),
            "g0": candidate(replace(lean, log_fillfactor=40, before_guard=True)),
            "i": candidate(replace(lean, log_fillfactor=40, id_btree=True))}


# -- one dispatcher's work -----------------------------------------------------------------------

def claim(conn: psycopg.Connection[Any], v: Variant, batch: int) -> list[tuple[Any, ...]]:
    with conn.pipeline():
        conn.execute(QUERIES["claim_settings"])
        cur = conn.execute(v.claim, {
            "limit": batch, "dispatcher": DISPATCHER, "lease_s": LEASE_S,
            "workflows": [bench_order.name]})
        conn.commit()
    return cur.fetchall()


def finish(conn: psycopg.Connection[Any], v: Variant,
           events: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """What the store's finish sends for a batch whose handlers all returned the next state:
    the write-back, then the hand-over claim of the rows' next events, one transaction."""
    n = len(events)
    params = {
        "dispatcher": DISPATCHER, "running": "running", "ids": [e[0] for e in events],
        "attempts": [e[9] for e in events], "handlers": [HANDLER] * n,
        "errors": [None] * n, "statuses": ["done"] * n, "outcomes": ["applied"] * n,
        "keys": [e[2] for e in events], "stale_outcomes": ["stale"] * n,
        "next_states": [NEXT[e[6]] for e in events], "v_0": [NEXT[e[6]] for e in events],
        "e_0": [e[6] for e in events]}
    with conn.pipeline():
        conn.execute(QUERIES["index_plans"])
        conn.execute(QUERIES["write_settings"], {"quiet": "on", "lock_timeout": "2000ms"})
        written = conn.execute(v.write_back, params)
        conn.execute(QUERIES["hand_over_plans"])
        handed = conn.execute(v.hand_over, {
            "dispatcher": DISPATCHER, "lease_s": LEASE_S,
            "workflows": [e[1] for e in events], "keys": [e[2] for e in events]})
        conn.commit()
    if len(written.fetchall()) != n:
        raise RuntimeError(f"variant {v.name}: a write-back finished fewer events than it held")
    return handed.fetchall()


def walk(conn: psycopg.Connection[Any], v: Variant, orders: int, batch: int) -> int:
    """Place ``orders`` orders and walk them to their terminal state; transitions done."""
    conn.execute(PLACE, {"n": orders})
    conn.commit()
    done = 0
    events = claim(conn, v, batch)
    while events:
        done += len(events)
        events = finish(conn, v, events) or claim(conn, v, batch)
    if v.end:
        conn.execute(v.end)
        conn.commit()
    if done != orders * TRANSITIONS_PER_ORDER:
        raise RuntimeError(f"variant {v.name}: {done} transitions for {orders} orders")
    return done


# -- WAL by relation -----------------------------------------------------------------------------

BY_RELATION = """
WITH b AS (
    SELECT * FROM pg_get_wal_block_info(%(start)s, %(end)s)
    WHERE reldatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
), r AS (
    SELECT start_lsn, min(block_id) AS first, max(record_length) AS len,
           sum(coalesce(block_fpi_length, 0)) AS fpi
    FROM b GROUP BY start_lsn
), named AS (
    SELECT b.*, r.first, r.len, r.fpi,
           pg_filenode_relation(CASE WHEN b.reltablespace = 1663 THEN 0
                                     ELSE b.reltablespace END, b.relfilenode) AS rel
    FROM b JOIN r USING (start_lsn)
)
SELECT coalesce(coalesce(pg_partition_root(rel), rel)::text, 'filenode ' || relfilenode)
       || CASE relforknumber WHEN 0 THEN '' WHEN 1 THEN ' (fsm)' WHEN 2 THEN ' (vm)'
                             ELSE ' (fork)' END
       || CASE WHEN %(by_type)s THEN ' ' || resource_manager || '/' || record_type
               ELSE '' END AS relation,
       sum(CASE WHEN block_id = first THEN len - fpi ELSE 0 END)::bigint AS bytes,
       sum(coalesce(block_fpi_length, 0))::bigint AS fpi_bytes
FROM named GROUP BY 1 ORDER BY 2 DESC
"""

BY_RECORD = """
SELECT resource_manager || '/' || record_type AS record,
       count(*) AS records, sum(record_length)::bigint AS bytes,
       sum(fpi_length)::bigint AS fpi_bytes,
       bool_or(block_ref IS NULL) AS without_block
FROM pg_get_wal_records_info(%(start)s, %(end)s)
GROUP BY 1 ORDER BY 3 DESC
"""

NO_BLOCK = """
SELECT coalesce(sum(record_length), 0)::bigint
FROM pg_get_wal_records_info(%(start)s, %(end)s) WHERE block_ref IS NULL
"""

OTHER_DATABASES = """
SELECT coalesce(sum(r.len), 0)::bigint FROM (
    SELECT start_lsn, max(record_length) AS len
    FROM pg_get_wal_block_info(%(start)s, %(end)s)
    GROUP BY start_lsn
    HAVING NOT bool_or(reldatabase = (SELECT oid FROM pg_database
                                      WHERE datname = current_database()))) r
"""


def lsn(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def checkpoints(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT num_timed + num_requested FROM pg_stat_checkpointer").fetchone()
    assert row is not None
    return int(row[0])


def window(v: Variant, orders: int, batch: int
           ) -> dict[str, Any]:
    with psycopg.connect(v.dsn) as conn, psycopg.connect(v.dsn, autocommit=True) as probe:
        probe.execute("CHECKPOINT")
        before, cps = lsn(probe), checkpoints(probe)
        started = time.perf_counter()
        transitions = walk(conn, v, orders, batch)
        elapsed = time.perf_counter() - started
        after = lsn(probe)
        result = wal_of(probe, before, after, transitions)
        result |= {"transitions": transitions, "seconds": round(elapsed, 3),
                   "transitions_per_s": round(transitions / elapsed),
                   "checkpoints_in_window": checkpoints(probe) - cps}
        vac_from = lsn(probe)
        probe.execute(v.vacuum)
        vac = probe.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)",
                            [vac_from]).fetchone()
        result["vacuum_after_bytes_per_transition"] = round(int(vac[0]) / transitions)  # type: ignore[index]
    return result


def wal_of(probe: psycopg.Connection[Any], start: str, end: str, n: int) -> dict[str, Any]:
    span = {"start": start, "end": end}
    total = probe.execute("SELECT pg_wal_lsn_diff(%(end)s, %(start)s)", span).fetchone()
    rel = probe.execute(BY_RELATION, span | {"by_type": False}).fetchall()
    rel_type = probe.execute(BY_RELATION, span | {"by_type": True}).fetchall()
    rec = probe.execute(BY_RECORD, span).fetchall()
    no_block = probe.execute(NO_BLOCK, span).fetchone()
    other = probe.execute(OTHER_DATABASES, span).fetchone()
    assert total is not None and no_block is not None and other is not None

    def per(x: Any) -> float:
        return round(int(x) / n, 1)

    records = sum(int(r[2]) for r in rec)
    return {
        "lsn_bytes_per_transition": per(total[0]),  # the whole server's
        "record_bytes_per_transition": per(records),
        "fpi_bytes_per_transition": per(sum(int(r[3]) for r in rec)),
        "page_headers_and_padding_per_transition": per(int(total[0]) - records),
        "no_block_records_per_transition": per(no_block[0]),
        "other_databases_per_transition": per(other[0]),
        "by_relation": {r[0]: [per(r[1]), per(r[2])] for r in rel},
        "by_relation_and_record": {r[0]: [per(r[1]), per(r[2])] for r in rel_type},
        "by_record": {r[0]: [per(r[2]), per(r[3]), round(int(r[1]) / n, 2)] for r in rec},
    }


# -- the scratch databases -----------------------------------------------------------------------

def create_database(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return conninfo.make_conninfo(admin_dsn, dbname=name)


def make(admin_dsn: str, name: str,
         setup: Callable[[psycopg.Connection[Any], str, Variant], None]) -> Variant:
    v = Variant(name)
    v.dsn = create_database(admin_dsn, f"walsplit_{name}")
    prepare(v.dsn)
    with psycopg.connect(v.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        setup(conn, v.dsn, v)
        conn.execute("VACUUM ANALYZE")
    return v


def summary(v: Variant) -> dict[str, Any]:
    """The medians of a variant's rounds."""
    def med(key: str) -> float:
        return float(statistics.median(r[key] for r in v.rounds))
    relations = sorted({k for r in v.rounds for k in r["by_relation"]})
    def own(r: dict[str, Any]) -> float:  # the server's WAL less other databases' records
        return float(r["lsn_bytes_per_transition"] - r["other_databases_per_transition"])
    return {
        "wal": float(statistics.median(own(r) for r in v.rounds)),
        "other": med("other_databases_per_transition"),
        "fpi": med("fpi_bytes_per_transition"),
        "without_fpi": float(statistics.median(
            own(r) - r["fpi_bytes_per_transition"] for r in v.rounds)),
        "padding": med("page_headers_and_padding_per_transition"),
        "no_block": med("no_block_records_per_transition"),
        "per_s": med("transitions_per_s"),
        "per_s_rounds": [r["transitions_per_s"] for r in v.rounds],
        "vacuum_after": med("vacuum_after_bytes_per_transition"),
        "checkpoints": sum(r["checkpoints_in_window"] for r in v.rounds),
        "by_relation": {k: [float(statistics.median(r["by_relation"].get(k, [0, 0])[i]
                                                    for r in v.rounds)) for i in (0, 1)]
                        for k in relations},
    }


def table(made: Sequence[Variant]) -> str:
    """Bytes per transition by relation (records without their full page images; the images
    apart), medians of the rounds, one column per variant."""
    sums = {v.name: summary(v) for v in made}
    names = list(sums)
    head = f"{'bytes per transition (median)':<44}" + "".join(f"{n:>14}" for n in names)
    lines = [head, "-" * len(head)]

    def row(label: str, cells: Sequence[str]) -> None:
        lines.append(f"{label:<44}" + "".join(f"{c:>14}" for c in cells))

    row("WAL, all (this database's, full pages in)", [f"{sums[n]['wal']:,.0f}" for n in names])
    row("  of which full page images", [f"{sums[n]['fpi']:,.0f}" for n in names])
    row("  without full page images", [f"{sums[n]['without_fpi']:,.0f}" for n in names])
    relations = sorted({k for n in names for k in sums[n]["by_relation"]},
                       key=lambda k: -max(sum(sums[n]["by_relation"].get(k, [0, 0]))
                                          for n in names))
    small = [k for k in relations
             if max(sum(sums[n]["by_relation"].get(k, [0, 0])) for n in names) < 10]
    for k in relations:
        if k in small:
            continue
        cells = []
        for n in names:
            data, fpi = sums[n]["by_relation"].get(k, [0.0, 0.0])
            cells.append("-" if data + fpi == 0 else
                         f"{data:,.0f}" + (f" +{fpi:,.0f}" if round(fpi) else ""))
        if any(c != "-" and c != "0" for c in cells):
            row("  " + k, cells)
    row("  others (fsm, vm, catalogs, sequences)", [
        f"{sum(sums[n]['by_relation'].get(k, [0, 0])[0] for k in small):,.0f} +"
        f"{sum(sums[n]['by_relation'].get(k, [0, 0])[1] for k in small):,.0f}" for n in names])
    row("  records without a block (commits...)", [f"{sums[n]['no_block']:,.0f}" for n in names])
    row("  page headers and alignment", [f"{sums[n]['padding']:,.0f}" for n in names])
    row("other databases' WAL, left out", [f"{sums[n]['other']:,.0f}" for n in names])
    row("checkpoints during the windows", [str(sums[n]["checkpoints"]) for n in names])
    row("VACUUM after the window (not in WAL above)",
        [f"{sums[n]['vacuum_after']:,.0f}" for n in names])
    row("transitions/s, median", [f"{sums[n]['per_s']:,.0f}" for n in names])
    for i in range(len(made[0].rounds)):
        row(f"  round {i + 1}", [f"{sums[n]['per_s_rounds'][i]:,}" for n in names])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--orders", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="a,b,c,d")
    parser.add_argument("--json", metavar="PATH", help="also write every round in full here")
    parser.add_argument("--table-from", metavar="PATH",
                        help="print the table of rounds written earlier with --json; run nothing")
    args = parser.parse_args()
    if args.table_from:
        with open(args.table_from, encoding="utf-8") as saved:
            print(table([Variant(name, rounds=rounds)
                         for name, rounds in json.load(saved).items()]))
        return
    admin_dsn = args.dsn or resolve_dsn(Settings.load())
    chosen = [(n, variants()[n]) for n in args.variants.split(",")]
    made = [make(admin_dsn, name, setup) for name, setup in chosen]
    for r in range(args.rounds + 1):
        for v in made:
            result = window(v, args.orders, args.batch)
            if r > 0:
                v.rounds.append(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({v.name: v.rounds for v in made}, out, indent=1)
    print(table(made))


if __name__ == "__main__":
    main()
