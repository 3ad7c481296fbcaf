"""What operators read of the event log and the workflow tables (counts, lists, histories, the
dashboard's samples), and the writes they make: move a row by hand, redrive dead events, prune.

Each verb runs one named query of ``sql/reports.sql`` and returns plain rows by column name; with
db.py, store.py and install.py, one of the modules that talk to psycopg.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from orchestrator import install
from orchestrator.db import borrowed, translated
from orchestrator.errors import OverrideRefused
from orchestrator.outcomes import Pruned
from orchestrator.sql import REPORTS
from orchestrator.workflow import Workflow

Row = dict[str, Any]
# The dashboard's stuck-row queries look at no more rows than this per call.
EXAMINE_ROWS = 20_000


class Reports:
    """Operator reads and writes over ``pool``; driver errors leave as StoreError."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        with borrowed(self.pool) as conn, translated(conn):
            yield conn

    def _rows(self, query: str | sql.Composed, params: Mapping[str, Any] | None = None
              ) -> list[Row]:
        with self._conn() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params or {})
            return cur.fetchall()

    # -- the event log -----------------------------------------------------------------------

    def installed_workflows(self) -> list[Workflow]:
        """The workflows `orchestrator migrate` installed. Raises NotMigrated before then."""
        with self._conn() as conn:
            return install.installed_workflows(conn)

    def event_counts(self) -> list[Row]:
        """Per workflow: pending, running, dead, oldest_pending_age_s."""
        return self._rows(REPORTS["event_counts"])

    def event_backlog(self) -> list[Row]:
        """Per workflow: due, waiting, timers, running, dead, oldest_due_age_s, min_open_id."""
        return self._rows(REPORTS["event_backlog"])

    def list_events(self, *, status: str | None, workflow: str | None, row_key: str | None,
                    search: str | None, limit: int) -> list[Row]:
        """Events, newest first, filtered (None: any)."""
        return self._rows(REPORTS["list_events"], {
            "status": status, "workflow": workflow, "row_key": row_key, "search": search,
            "limit": limit})

    def row_history(self, workflow: str, key: str) -> list[Row]:
        """Every event of one row, oldest first."""
        return self._rows(REPORTS["row_history"], {"workflow": workflow, "row_key": key})

    def row_errors(self, workflow: str, key: str) -> list[Row]:
        """Every failed attempt (and redrive) of one row's events: event_id, attempt, error,
        at."""
        return self._rows(REPORTS["row_errors"], {"workflow": workflow, "row_key": key})

    def event_statuses(self, ids: Sequence[int]) -> dict[int, str]:
        """The status of each of ``ids`` that exists."""
        rows = self._rows(REPORTS["event_statuses"], {"ids": list(ids)})
        return {r["id"]: r["status"] for r in rows}

    def event_horizon(self) -> tuple[datetime, int]:
        """The server's time and the highest event id so far."""
        row = self._rows(REPORTS["event_horizon"])[0]
        return row["now"], int(row["max_id"])

    def recent_finished(self, *, floor: int, since: datetime, last: datetime) -> list[Row]:
        """Per workflow, events finished since ``since`` among ids from ``floor`` (and since
        ``last``), with their lag percentiles."""
        return self._rows(REPORTS["recent_finished"], {
            "floor": floor, "since": since, "last": last})

    def pruned(self) -> datetime | None:
        """The time before which finished events were pruned (None: nothing ever was)."""
        before = self._rows(REPORTS["pruned"])[0]["before"]
        return before if isinstance(before, datetime) else None

    # -- retention ---------------------------------------------------------------------------

    def prune(self, older_than: timedelta, *, dry_run: bool = False) -> Pruned:
        """Remove (``dry_run``: count) finished events older than ``older_than``, whole hours
        of history at a time; waits while a dispatcher archives or prunes."""
        row = self._rows(REPORTS["prune"], {"older_than": older_than, "dry_run": dry_run})[0]
        return Pruned(int(row["events"]), int(row["partitions"]), row["pruned_before"])

    def prune_dead(self, older_than: timedelta, *, workflow: str | None, handler: str | None,
                   dry_run: bool = False) -> int:
        """Remove (``dry_run``: count) dead events that died more than ``older_than`` ago, of
        ``workflow`` and ``handler`` (full or last dotted name) when given, with their errors.
        Needs orchestrator_admin (StoreError otherwise)."""
        return int(self._rows(REPORTS["prune_dead"], {
            "older_than": older_than, "workflow": workflow, "handler": handler,
            "dry_run": dry_run})[0]["events"])

    # -- the workflow tables -----------------------------------------------------------------

    def limits(self) -> list[Row]:
        """Each fleet-wide limit: name, max_running, per_s, running (runs holding a slot now)
        and waits (times an event was put back to wait its turn); none on a schema older than
        limits."""
        if not self._rows(REPORTS["limits_present"])[0]["present"]:
            return []
        return self._rows(REPORTS["limits"])

    def state_counts(self, wf: Workflow) -> dict[str, int]:
        """How many rows of ``wf`` are in each state (states with none are absent; none for a
        workflow without a state column)."""
        if wf.column is None:
            return {}
        rows = self._rows(_on_table(REPORTS["state_counts"], wf))
        return {str(r["state"]): int(r["rows"]) for r in rows}

    def row_state(self, wf: Workflow, key: str) -> str | None:
        """The state of one row, or None when there is no such row."""
        rows = self._rows(_on_table(REPORTS["row_state"], wf), {"key": key})
        return None if not rows else str(rows[0]["state"])

    def rows_in_states(self, wf: Workflow, states: Sequence[str], *, older_than_s: float = 0.0,
                       oldest_first: bool = True, limit: int = 100,
                       examine: int = EXAMINE_ROWS) -> list[Row]:
        """Rows of ``wf`` in ``states`` for at least ``older_than_s``, with when they entered
        the state, their latest event and next deadline, among the first ``examine`` rows in
        those states."""
        return self._rows(_on_table(REPORTS["rows_in_states"], wf), {
            "workflow": wf.name, "column": wf.column, "states": list(states),
            "older_than_s": older_than_s, "oldest_first": oldest_first, "limit": limit,
            "examine": examine})

    def stuck_counts(self, wf: Workflow, states: Sequence[str], older_than_s: float, *,
                     examine: int = EXAMINE_ROWS) -> dict[str, int]:
        """How many rows of ``wf`` have been in each of ``states`` for ``older_than_s``, among
        the first ``examine`` rows in those states."""
        rows = self._rows(_on_table(REPORTS["stuck_counts"], wf), {
            "workflow": wf.name, "column": wf.column, "states": list(states),
            "older_than_s": older_than_s, "examine": examine})
        return {r["state"]: int(r["rows"]) for r in rows}

    # -- operator writes ---------------------------------------------------------------------

    def move(self, wf: Workflow, key: str, source: str, dest: str) -> bool:
        """Move one row from ``source`` to ``dest`` (compare-and-set); False if it was no longer
        in ``source``. The guard trigger still applies."""
        with self._conn() as conn:
            return _move(conn, wf, key, source, dest) == 1

    def redrive(self, workflows: Mapping[str, Workflow], *, ids: Sequence[int] = (),
                all_dead: bool = False, handler: str | None = None,
                workflow: str | None = None, dry_run: bool = False) -> list[Row]:
        """Put dead events back in the queue with fresh attempts, in one transaction; the
        redriven events. A row their death moved to its workflow's failure state goes back to
        the state the event saw: an override of the guard, which the database allows members
        of orchestrator_admin only. Raises OverrideRefused, redriving nothing, when a row
        needs it and this session's user is not one."""
        params = {"ids": list(ids), "all": all_dead, "handler": handler, "workflow": workflow}
        with self._conn() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            dead = cur.execute(REPORTS["dead_events"], params).fetchall()
            if dry_run or not dead:
                return dead
            moves = [(wf, d) for d in dead
                     if (wf := workflows.get(d["workflow"])) and wf.failure_state]
            if moves:
                _check_override(conn, moves)
            chosen = [d["id"] for d in dead]
            cur.execute(REPORTS["redrive"], {"ids": chosen})
            cur.execute(REPORTS["record_redrive"], {"ids": chosen})
            cur.execute(REPORTS["override"])
            for wf, d in moves:
                _move(conn, wf, d["row_key"], str(wf.failure_state), d["new_row"].get(wf.column))
            return dead


def _check_override(conn: psycopg.Connection[Any], moves: Sequence[tuple[Workflow, Row]]
                    ) -> None:
    """Raise OverrideRefused when a row of ``moves`` is in its failure state and this session
    may not move it out."""
    user, allowed = conn.execute(REPORTS["may_override"]).fetchone() or ("?", False)
    if allowed:
        return
    refused = []
    for wf, d in moves:
        state = conn.execute(_on_table(REPORTS["row_state"], wf), {"key": d["row_key"]}
                             ).fetchone()
        if state is not None and state[0] == wf.failure_state:
            refused.append(int(d["id"]))
    if refused:
        raise OverrideRefused(str(user), refused)


def _on_table(query: str, wf: Workflow) -> sql.Composed:
    """``query`` with ``wf``'s table, key and state column composed in; a workflow without a
    state column reads '' as every row's state (in no state: there are none)."""
    return sql.SQL(query).format(
        table=sql.Identifier(wf.schema, wf.table), key=sql.Identifier(wf.key),
        state=sql.Identifier(wf.column) if wf.column else sql.SQL("''::text"))


def _move(conn: psycopg.Connection[Any], wf: Workflow, key: str, source: str,
          dest: str) -> int:
    return conn.execute(_on_table(REPORTS["move_row"], wf),
                        {"key": key, "source": source, "dest": dest}).rowcount
