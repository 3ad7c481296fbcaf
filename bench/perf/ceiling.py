"""The ceiling: how many single-row UPDATE transactions per second the server commits.

pgbench (shipped with the embedded server, so no extra install) runs a custom script against
``bench_ceiling``, a table of the same shape as the bench's orders, with as many connections
as a dispatcher used in the sustained run (its pool's connections in use, and LISTEN), plain
or with a pg_notify in each transaction.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from orchestrator.bench.db import BenchError, Session
from orchestrator.db import one_line
from orchestrator.embedded import binary

ROWS = 10_000
UPDATE = """\\set id random(1, {rows})
UPDATE public.bench_ceiling SET status = CASE status WHEN 'placed' THEN 'validated'
    ELSE 'placed' END WHERE id = :id;
"""
UPDATE_NOTIFY = """\\set id random(1, {rows})
BEGIN;
UPDATE public.bench_ceiling SET status = CASE status WHEN 'placed' THEN 'validated'
    ELSE 'placed' END WHERE id = :id;
SELECT pg_notify('bench_ceiling', '');
COMMIT;
"""
_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)


@contextmanager
def table(session: Session) -> Iterator[None]:
    """The ceiling's table, filled and vacuumed, for the duration of the block."""
    session.run("create_ceiling")
    try:
        session.run("fill_ceiling", {"rows": ROWS})
        session.run("vacuum_ceiling")
        yield
    finally:
        session.run("drop_ceiling")


def updates_per_s(dsn: str, *, connections: int, seconds: float, notify: bool = False) -> float:
    """Committed single-row UPDATE transactions per second over ``seconds`` on
    ``connections`` connections (with ``notify``, a pg_notify in each). Needs ``table``."""
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-") as tmp:
        return _pgbench(dsn, Path(tmp), UPDATE_NOTIFY if notify else UPDATE, connections,
                        seconds)


def _pgbench(dsn: str, tmp: Path, script: str, connections: int, seconds: float) -> float:
    path = tmp / "script.sql"
    path.write_text(script.format(rows=ROWS))
    threads = max(1, min(connections, os.cpu_count() or 1))
    argv = [str(binary("pgbench")), "--no-vacuum", "--protocol=prepared",
            f"--client={connections}", f"--jobs={threads}", f"--time={max(1, round(seconds))}",
            f"--file={path}", dsn]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                              check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"pgbench failed: {one_line(exc)}") from None
    found = _TPS.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise BenchError(f"pgbench failed: {one_line(Exception(done.stderr or done.stdout))}")
    return float(found.group(1))
