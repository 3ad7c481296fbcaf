"""Removing a day of history: a DELETE on the events table against moving finished events to
the hourly history and dropping its partitions. `python -m bench.retention [--events N]
[--dsn DSN]` (default: the embedded server) fills two scratch databases alike with N finished
events spread over the last 48 hours (ids growing with time, as they do), removes those older
than 24 hours each way, and prints time, WAL, the dead tuples left to vacuum, the vacuum's
own cost and the queue's size before and after.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import conninfo, sql

from orchestrator import schema
from orchestrator.app import resolve_dsn
from orchestrator.config import Settings

FILL = """
INSERT INTO orchestrator.events
    (workflow, row_key, column_name, op, old_value, new_value, old_row, new_row, status,
     attempts, handler, outcome, next_state, created_at, started_at, finished_at)
SELECT 'bench_order', (g / 6)::text, 'status', 'UPDATE', 'placed', 'validated', r, r, 'done',
       1, 'bench.validate', 'applied', 'paid', t, t, t
FROM generate_series(1, %(n)s) g,
     LATERAL (SELECT now() - make_interval(secs => 172800.0 * (%(n)s - g) / %(n)s) AS t) ts,
     LATERAL (SELECT jsonb_build_object('id', g / 6, 'status', 'placed', 'customer_id', g %% 1000,
                                        'total_cents', 1000 + g %% 5000,
                                        'handler_started_s', NULL,
                                        'placed_at', t) AS r) rs
"""
SIZE = """
SELECT pg_total_relation_size('orchestrator.events') AS queue_bytes,
       coalesce((SELECT sum(pg_total_relation_size(i.inhrelid)) FROM pg_inherits i
                 WHERE i.inhparent = 'orchestrator.events_history'::regclass), 0)::bigint
           AS history_bytes
"""
DEAD = "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'orchestrator.events'::regclass"
CUTOFF = "now() - interval '24 hours'"


def create_database(admin_dsn: str, name: str) -> str:
    drop_database(admin_dsn, name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return conninfo.make_conninfo(admin_dsn, dbname=name)


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def timed(conn: psycopg.Connection[Any], statement: str) -> dict[str, float]:
    """Run ``statement``; its wall time in ms and the WAL it wrote in bytes."""
    before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
    started = time.perf_counter()
    conn.execute(statement)
    elapsed_ms = (time.perf_counter() - started) * 1000
    wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", before).fetchone()
    return {"ms": round(elapsed_ms, 1), "wal_bytes": int(wal[0]) if wal else 0}


def case(admin_dsn: str, name: str, events: int,
         remove: Callable[[psycopg.Connection[Any]], dict[str, Any]]) -> dict[str, Any]:
    dsn = create_database(admin_dsn, name)
    try:
        schema.upgrade(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(FILL, {"n": events})
            conn.execute("VACUUM ANALYZE orchestrator.events")
            before = conn.execute(SIZE).fetchone()
            result = remove(conn)
            conn.execute("SELECT pg_stat_force_next_flush()")
            result["dead_tuples_left"] = conn.execute(DEAD).fetchone()[0]  # type: ignore[index]
            result["vacuum"] = timed(conn, "VACUUM orchestrator.events")
            after = conn.execute(SIZE).fetchone()
            result["queue_mb_before_after"] = [round(before[0] / 2**20, 1),  # type: ignore[index]
                                               round(after[0] / 2**20, 1)]  # type: ignore[index]
            result["history_mb_after"] = round(after[1] / 2**20, 1)  # type: ignore[index]
            return result
    finally:
        drop_database(admin_dsn, name)


def delete(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    return {"remove": timed(conn, "DELETE FROM orchestrator.events WHERE status = 'done'"
                                  f" AND finished_at < {CUTOFF}")}


def archive_then_drop(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    moved = {"ms": 0.0, "wal_bytes": 0}
    while True:  # what the dispatchers do as events finish, 10,000 at a time
        step = timed(conn, "SELECT orchestrator.archive_v1(now(), 10000, true, '1 hour')")
        moved = {k: moved[k] + step[k] for k in moved}
        if step["wal_bytes"] == 0 or not _any_event(conn):
            break
    dropped = timed(conn, f"SELECT * FROM orchestrator.prune_v1({CUTOFF}, false, true)")
    return {"archive_all": moved, "remove": dropped}


def _any_event(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT FROM orchestrator.events)").fetchone()
    return bool(row and row[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--dsn", default=None)
    args = parser.parse_args()
    admin_dsn = args.dsn or resolve_dsn(Settings.load())
    report = {"events": args.events,
              "delete": case(admin_dsn, "orchestrator_retention_delete", args.events, delete),
              "archive_and_drop": case(admin_dsn, "orchestrator_retention_drop", args.events,
                                       archive_then_drop)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
