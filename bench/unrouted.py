"""What a column route's WHEN clause saves on changes nobody listens to. `python -m
bench.unrouted [--rows N] [--runs R] [--dsn DSN]` (default: the embedded server) creates the
shop's tables (tests/integration/lifecycle/shop.sql) in a scratch database per case, with one
workflow watching ``orders.approved``: served by a route ``to=True`` (the change below is not
recorded), by ``on_change`` (every change is), or no workflow at all; then times an UPDATE of
N rows from true to false, R times, and prints the median and the events recorded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg

from orchestrator import Registry, Workflow
from orchestrator.app import Orchestrator, resolve_dsn
from orchestrator.config import Settings
from orchestrator.testing import create_database, drop_database, unique_name

SCHEMA = Path(__file__).parents[1] / "tests" / "integration" / "lifecycle" / "shop.sql"


def workflow(kind: str) -> Workflow | None:
    """The workflow of one case: ``routed``, ``any`` or ``none``."""
    if kind == "none":
        return None
    wf = Workflow(f"bench_{kind}", table="shop.orders", column=None, watch=["approved"])
    register = wf.on_column("approved", to=True) if kind == "routed" else wf.on_change("approved")
    register(lambda event: None)
    return wf


def case(server_dsn: str, kind: str, rows: int, runs: int) -> dict[str, Any]:
    name = unique_name("bench_unrouted")
    dsn = create_database(server_dsn, name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA.read_text(encoding="utf-8"))
        if (wf := workflow(kind)) is not None:
            with Orchestrator(Settings.load(env={}, dsn=dsn), Registry([wf])) as app:
                app.migrate()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO shop.orders (customer, approved)"
                         " SELECT 'c', true FROM generate_series(1, %s)", (rows,))
            conn.execute("VACUUM ANALYZE shop.orders")
            before = _events(conn, wf)
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                conn.execute("UPDATE shop.orders SET approved = false")
                times.append(time.perf_counter() - started)
                conn.execute("SET session_replication_role = replica")  # back, no triggers
                conn.execute("UPDATE shop.orders SET approved = true")
                conn.execute("RESET session_replication_role")
            recorded = _events(conn, wf) - before
        return {"median_ms": round(statistics.median(times) * 1000),
                "runs_ms": [round(t * 1000) for t in times], "events_recorded": recorded}
    finally:
        drop_database(server_dsn, name)


def _events(conn: psycopg.Connection[Any], wf: Workflow | None) -> int:
    if wf is None:
        return 0
    row = conn.execute("SELECT count(*) FROM orchestrator.events").fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dsn", default=None)
    args = parser.parse_args()
    server_dsn = args.dsn or resolve_dsn(Settings.load())
    report = {kind: case(server_dsn, kind, args.rows, args.runs)
              for kind in ("routed", "any", "none")}
    print(json.dumps({"rows": args.rows} | report, indent=2))


if __name__ == "__main__":
    main()
