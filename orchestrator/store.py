"""The dispatcher's database verbs: claim, finish, heartbeat, requeue, release.

Installing workflows is install.py's job and what operators read and redrive is reports.py's;
with db.py these are the modules that talk to psycopg. Verbs take and return domain objects
(Event, Result, Workflow); driver errors leave as StoreError or DatabaseUnavailable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from orchestrator import install, slots
from orchestrator.db import (
    Transaction,
    as_param,
    behind_pooler,
    borrowed,
    is_connection_error,
    one_line,
    pipelined,
    rollback_quietly,
    translated,
)
from orchestrator.errors import DatabaseUnavailable, RelatedDataError
from orchestrator.events import Event, event_from_row
from orchestrator.outcomes import EventStatus, FinishReport, Outcome, Pruned, Result
from orchestrator.related_reads import RelatedReader
from orchestrator.routing import Limit
from orchestrator.sql import QUERIES
from orchestrator.workflow import Workflow

log = logging.getLogger(__name__)

CLAIM_KINDS = {  # the claim query's variants: which pending events, in which order
    "plain": ("e.op <> 'TIMER' AND NOT e.suspect", "e.id"),
    "suspect": ("e.op <> 'TIMER' AND e.suspect", "e.id"),
    "timer": ("e.op = 'TIMER'", "e.run_after"),
}


class Store:
    """The engine's database verbs for one dispatcher (``dispatcher`` names it in claims)."""

    def __init__(self, pool: ConnectionPool, *, dispatcher: str, lease_s: float,
                 lock_timeout_s: float = 2.0) -> None:
        self.pool = pool
        self.dispatcher = dispatcher
        self.lease_s = lease_s
        self._write_settings = {"lock_timeout": f"{int(lock_timeout_s * 1000)}ms"}
        self._workflows: dict[str, Workflow] = {}
        self._types: dict[str, dict[str, str]] = {}  # workflow: column: type
        self._columns: dict[str, frozenset[str]] = {}
        self._write_back: dict[tuple[str, tuple[str, ...], tuple[str, ...]], bytes] = {}
        self._related = RelatedReader(pool)
        self._claim = {kind: sql.SQL(QUERIES["claim"]).format(kind=sql.SQL(where),
                                                              order=sql.SQL(order))
                       for kind, (where, order) in CLAIM_KINDS.items()}

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        with borrowed(self.pool) as conn, translated(conn):
            yield conn

    def _events(self, query: str | sql.Composed, params: Mapping[str, Any]) -> list[Event]:
        with self._conn() as conn:
            with pipelined(conn, commit=True, pooled=behind_pooler(self.pool)):
                conn.execute(QUERIES["claim_settings"])
                cur = conn.cursor(row_factory=dict_row).execute(query, params)
            rows = cur.fetchall()
        return [event_from_row(row) for row in rows]

    # -- dispatching -------------------------------------------------------------------------

    def claim_timers(self, limit: int) -> list[Event]:
        """Claim up to ``limit`` deadline timers that came due, soonest first."""
        return self._events(self._claim["timer"], {
            "limit": limit, "dispatcher": self.dispatcher, "lease_s": self.lease_s,
            "workflows": list(self._workflows)})

    def claim(self, limit: int, *, suspect: bool = False) -> list[Event]:
        """Claim up to ``limit`` runnable events of the workflows given to use_workflows (oldest
        first, per-row order kept). A dispatcher never takes another workflow's events.
        ``suspect``: claim among the events whose dispatcher died instead."""
        return self._events(self._claim["suspect" if suspect else "plain"], {
            "limit": limit, "dispatcher": self.dispatcher, "lease_s": self.lease_s,
            "workflows": list(self._workflows)})

    def has_suspects(self) -> bool:
        """Whether any due event of these workflows waits to be run alone."""
        with self._conn() as conn:
            row = conn.execute(QUERIES["has_suspects"],
                               {"workflows": list(self._workflows)}).fetchone()
        return bool(row and row[0])

    def finish(
        self, results: Sequence[Result], *, conn: psycopg.Connection[Any] | None = None,
        quiet: bool = True,
    ) -> FinishReport:
        """Write ``results`` in one transaction and claim the next event of each finished row.

        With ``conn`` (a handler's own open transaction) the writes join that transaction, which
        commits only if the outcome is written: when the row moved on (stale) the handler's own
        writes roll back and the event is finished as stale on its own; when the event is no
        longer ours, or the write is refused, they roll back and nothing is written.
        ``quiet``: the new events need no NOTIFY (they are handed over, or this dispatcher claims
        them next). When one result cannot be written (say a constraint refuses the handler's
        values), each is tried on its own and the failures come back in ``rejected``.
        Raises DatabaseUnavailable when the connection is lost.
        """
        if conn is None:
            with borrowed(self.pool) as own:
                return self._finish_or_split(own, results, quiet)
        report = self._finish_or_split(conn, results, quiet, commit=False)
        outcomes = [report.outcomes.get(r.event.id) for r in results]
        if all(o is not None and o is not Outcome.STALE for o in outcomes):
            with translated(conn):
                conn.commit()
            return report
        # Stale, no longer ours (the claim was lost) or refused: the handler's own writes must
        # not outlive the outcome they belong to.
        rollback_quietly(conn)
        stale = [replace(r, next=None, outcome=Outcome.STALE)
                 for r, o in zip(results, outcomes, strict=True) if o is Outcome.STALE]
        return self.finish(stale, quiet=quiet) if stale else report

    def _finish_or_split(
        self, conn: psycopg.Connection[Any], results: Sequence[Result], quiet: bool,
        commit: bool = True,
    ) -> FinishReport:
        try:
            return self._finish(conn, results, quiet, commit)
        except psycopg.Error as exc:
            rollback_quietly(conn)
            if is_connection_error(exc, conn):
                raise DatabaseUnavailable(f"database error: {one_line(exc)}") from exc
            if len(results) == 1:
                return FinishReport(rejected=[(results[0], one_line(exc))])
        report = FinishReport()
        for result in results:
            report.merge(self._finish_or_split(conn, [result], quiet, commit))
        return report

    def _finish(
        self, conn: psycopg.Connection[Any], results: Sequence[Result], quiet: bool,
        commit: bool,
    ) -> FinishReport:
        # Pipeline mode: every statement, the hand-over claim and the commit go out in one
        # round trip (see pipelined); statements still run in order inside one transaction.
        finished = [r.event for r in results if r.outcome is not Outcome.RETRY]
        failed = [r for r in results if r.error is not None]
        with pipelined(conn, commit=commit, pooled=behind_pooler(self.pool)):
            conn.execute(QUERIES["index_plans"])
            conn.execute(QUERIES["write_settings"],
                         self._write_settings | {"quiet": "on" if quiet else "off"})
            sent = [self._send(conn, kind, [r for r, _ in members], [v for _, v in members])
                    for kind, members in _grouped(results, self._workflows, self._types).items()]
            if failed:
                conn.execute(QUERIES["record_errors"], {
                    "ids": [r.event.id for r in failed],
                    "attempts": [r.event.attempt for r in failed],
                    "errors": [r.error for r in failed]})
            conn.execute(QUERIES["hand_over_plans"])
            handoff = conn.cursor(row_factory=dict_row).execute(QUERIES["claim_next_of_rows"], {
                "dispatcher": self.dispatcher, "lease_s": self.lease_s,
                "workflows": [e.workflow for e in finished], "keys": [e.key for e in finished],
            })
        outcomes = {row[0]: Outcome(row[1]) for cur in sent for row in cur.fetchall()}
        return FinishReport(outcomes, [event_from_row(row) for row in handoff.fetchall()])

    def _send(self, conn: psycopg.Connection[Any], kind: Kind, members: list[Result],
              rows: list[dict[str, Any]]) -> psycopg.Cursor[Any]:
        """One statement for all ``members``, over arrays of their columns in step: a retry,
        a finish writing nothing to the row (finish_many), or a write-back of one workflow and
        set of columns, each member writing its ``rows`` values. Its result set: (id,
        outcome) of each event still ours."""
        params: dict[str, Any] = {
            "dispatcher": self.dispatcher, "running": EventStatus.RUNNING.value,
            "ids": [r.event.id for r in members],
            "attempts": [r.event.attempt for r in members],
            "handlers": [r.handler for r in members], "errors": [r.error for r in members]}
        if kind == RETRY:
            return conn.execute(QUERIES["retry"], params | {
                "delays_s": [float(r.delay_s) for r in members]})
        params |= {"statuses": [r.status.value for r in members],
                   "outcomes": [r.outcome.value for r in members]}
        if kind == PLAIN:
            return conn.execute(QUERIES["finish_many"], params)
        wf = self._workflows[kind[0]]
        params |= {
            "keys": [r.event.key for r in members],
            "stale_outcomes": [(Outcome.DEAD if r.status is EventStatus.DEAD
                                else Outcome.STALE).value for r in members],
            "next_states": [r.next.state if r.next else None for r in members],
        } | {f"v_{i}": [as_param(row[name]) for row in rows] for i, name in enumerate(kind[1])}
        params |= {f"e_{i}": [_as_text(r.event.new_row.get(name)) for r in members]
                   for i, name in enumerate(kind[3])}
        return conn.execute(self._write_back_sql(wf, kind[1], kind[3], conn), params)

    def _write_back_sql(self, wf: Workflow, names: tuple[str, ...], seen: tuple[str, ...],
                        conn: psycopg.Connection[Any]) -> bytes:
        # Kept as bytes: psycopg would compose a sql.Composed again on every execute of every
        # write-back; composed once per workflow and set of columns, it is sent as it is.
        cache_key = (wf.name, names, seen)
        if (query := self._write_back.get(cache_key)) is None:
            types = self._types[wf.name]
            query = sql.SQL(QUERIES["write_back"]).format(
                table=sql.Identifier(wf.schema, wf.table), key=sql.Identifier(wf.key),
                key_type=_type(types[wf.key]),
                seen=sql.SQL("").join(sql.SQL(", {}::text[]").format(sql.Placeholder(f"e_{i}"))
                                      for i in range(len(seen))),
                seen_columns=sql.SQL("").join(sql.SQL(", {}").format(sql.Identifier(f"e_{i}"))
                                              for i in range(len(seen))),
                matches=_matches(seen, types),
                values=sql.SQL(", ").join(
                    sql.SQL("{}::{}[]").format(sql.Placeholder(f"v_{i}"),
                                               _type(_element(types[name])))
                    for i, name in enumerate(names)),
                columns=sql.SQL(", ").join(sql.Identifier(f"v_{i}") for i in range(len(names))),
                assignments=sql.SQL(", ").join(
                    sql.SQL("{} = f.{}::{}").format(sql.Identifier(name), sql.Identifier(f"v_{i}"),
                                                    _type(types[name]))
                    for i, name in enumerate(names)),
            ).as_bytes(conn)
            self._write_back[cache_key] = query
        return query

    # -- related data ------------------------------------------------------------------------

    def with_related(self, events: Sequence[Event]
                     ) -> tuple[list[Event], list[tuple[Event, RelatedDataError]]]:
        """``events`` with the related data their workflows declare in ``event.related``, all
        read in one round trip; the events of a workflow whose queries fail come back apart,
        each with the error. Raises DatabaseUnavailable when the connection is lost."""
        return self._related.read(events, self._workflows)

    def extend_leases(self, ids: Sequence[int]) -> None:
        """Renew the lease on events this dispatcher is still working on."""
        with self._conn() as conn:
            conn.execute(QUERIES["extend_leases"], {
                "ids": list(ids), "dispatcher": self.dispatcher, "lease_s": self.lease_s,
                "running": EventStatus.RUNNING.value})

    def requeue_expired(self) -> list[int]:
        """Return events whose lease ran out to the queue; their ids."""
        with self._conn() as conn:
            return [row[0] for row in conn.execute(QUERIES["requeue_expired"]).fetchall()]

    def release(self, ids: Sequence[int] = (), *, all_but: Sequence[int] | None = None) -> int:
        """Give back claimed events unfinished, not counting the attempt: those in ``ids``, or
        with ``all_but`` every claim of this dispatcher except those. Returns how many."""
        with self._conn() as conn:
            rows = conn.execute(QUERIES["release"], {
                "dispatcher": self.dispatcher, "ids": list(ids), "all": all_but is not None,
                "keep": list(all_but or ()),
            }).fetchall()
        return len(rows)

    def admit(self, wanted: Mapping[Limit, Sequence[int]], *, wait_s: float) -> set[int]:
        """Fleet-wide limits: see ``orchestrator.slots.admit``."""
        with self._conn() as conn:
            return slots.admit(conn, wanted, wait_s=wait_s, dispatcher=self.dispatcher)

    def has_open_events(self) -> bool:
        """Whether any event of these workflows is pending (due or not) or running, by any
        dispatcher."""
        with self._conn() as conn:
            row = conn.execute(QUERIES["has_open_events"],
                               {"workflows": list(self._workflows)}).fetchone()
        return bool(row and row[0])

    # -- retention ---------------------------------------------------------------------------

    def archive(self, *, after_s: float, max_rows: int,
                width: timedelta = timedelta(hours=1)) -> int | None:
        """Move up to ``max_rows`` events finished more than ``after_s`` seconds ago from the
        queue to the history, in partitions ``width`` wide where none holds them yet; how many
        moved, or None when another session (a dispatcher, an operator's prune) archives or
        prunes right now."""
        with self._conn() as conn:
            row = conn.execute(QUERIES["archive"], {
                "after_s": after_s, "max_rows": max_rows, "width": width}).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def prune(self, older_than: timedelta) -> Pruned | None:
        """Remove finished events older than ``older_than`` from the history, whole hours at a
        time; what was removed, or None when another session archives or prunes right now
        (this one does not wait)."""
        with self._conn() as conn:
            row = conn.execute(QUERIES["prune"], {
                "older_than": older_than, "dry_run": False, "wait": False}).fetchone()
        return None if row is None else Pruned(int(row[0]), int(row[1]), row[2])

    def transaction(self) -> Transaction:
        """A transaction for a handler's own writes; it takes a pooled connection only when
        first used, and asks the server for its pid behind a transaction-mode pooler (told
        so, or found by a new connection)."""
        return Transaction(self.pool, pooled=behind_pooler(self.pool))

    def terminate_backend(self, pid: int) -> None:
        """End a server session (a hung handler's transaction), releasing its locks."""
        with self._conn() as conn:
            conn.execute(QUERIES["terminate_backend"], {"pid": pid})

    # -- workflows ---------------------------------------------------------------------------

    def use_workflows(self, workflows: Sequence[Workflow]) -> None:
        """Check each workflow is installed as defined and remember it for write-backs.

        Raises NotMigrated when the schema or a workflow is missing, DefinitionError when the
        database holds a different definition (another version of the handlers migrated last).
        """
        with self._conn() as conn:
            install.verify(conn, workflows)
            for wf in workflows:
                self._types[wf.name] = install.column_types(conn, wf)
                self._columns[wf.name] = frozenset(self._types[wf.name])
                self._workflows[wf.name] = wf

    def verify_workflows(self, workflows: Sequence[Workflow]) -> None:
        """Raise as use_workflows does when the installed definitions changed since."""
        with self._conn() as conn:
            install.verify(conn, workflows)

    def columns(self, workflow: str) -> frozenset[str]:
        """The columns of a workflow's table, as read by use_workflows."""
        return self._columns[workflow]


# Column types a compare-and-set leaves out: no equality operator (json, xml).
UNCOMPARED = frozenset({"json", "jsonb", "xml"})


def _seen_columns(wf: Workflow, event: Event, types: Mapping[str, str]) -> tuple[str, ...]:
    """The columns whose values the write-back of ``event`` compares with those the event saw:
    the state column, and the column the event is about (a deadline timer's is the state
    column). A column of a type without equality (json, xml) or an array is not compared."""
    columns = [c for c in (wf.column, event.column) if c is not None]
    return tuple(c for c in dict.fromkeys(columns)
                 if types.get(c) not in UNCOMPARED and not types.get(c, "").endswith("]"))


def _matches(seen: Sequence[str], types: Mapping[str, str]) -> sql.Composable:
    """The compare-and-set of a batched write-back: each seen column still holds what the event
    saw (its text e_i cast to the column's type). A numeric is compared as a float8, the form
    its value took in the event (a JSON number), so that digits a float cannot hold never make
    an event stale."""
    if not seen:
        return sql.SQL("true")
    parts = []
    for i, name in enumerate(seen):
        column, value = sql.Identifier(name), sql.Identifier(f"e_{i}")
        if types[name].startswith("numeric"):
            parts.append(sql.SQL("t.{}::float8 IS NOT DISTINCT FROM f.{}::float8").format(
                column, value))
        else:
            parts.append(sql.SQL("t.{} IS NOT DISTINCT FROM f.{}::{}").format(
                column, value, _type(types[name])))
    return sql.SQL(" AND ").join(parts)


def _as_text(value: Any) -> str | None:
    """A value an event saw, as the text PostgreSQL casts back to the column's type."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


# A batch's statement: workflow, assigned columns, the Python types of their values, and the
# columns its compare-and-set compares.
Kind = tuple[str, tuple[str, ...], tuple[type, ...], tuple[str, ...]]
RETRY: Kind = ("", ("retry",), (), ())
PLAIN: Kind = ("", (), (), ())


def _grouped(results: Sequence[Result], workflows: Mapping[str, Workflow],
             types: Mapping[str, Mapping[str, str]]
             ) -> dict[Kind, list[tuple[Result, dict[str, Any]]]]:
    """Results by the statement that writes them, each with the values it writes to its row:
    retries, finishes writing nothing to their rows, and write-backs by workflow, assigned
    columns, the Python types of the values (psycopg sends a list of values of one type only)
    and the columns compared."""
    groups: dict[Kind, list[tuple[Result, dict[str, Any]]]] = {}
    for r in results:
        values: dict[str, Any] = {}
        if r.outcome is Outcome.RETRY:
            kind = RETRY
        elif r.next is None:
            kind = PLAIN
        else:
            wf = workflows[r.event.workflow]
            values = _assigned(r, wf)
            names = tuple(sorted(values))
            kind = (wf.name, names, tuple(type(values[n]) for n in names),
                    _seen_columns(wf, r.event, types[wf.name]))
        groups.setdefault(kind, []).append((r, values))
    return groups


def _assigned(r: Result, wf: Workflow) -> dict[str, Any]:
    """The columns a result writes to its row: the handler's values and the next state."""
    assert r.next is not None
    values = dict(r.next.values)
    if r.next.state is not None and wf.column is not None:
        values[wf.column] = r.next.state
    return values


def _element(type_name: str) -> str:
    """The type one element of a write-back's array of values has: the column's own, but text
    for an array column (unnest would flatten an array of arrays; the text is cast on
    assignment, as a single value was before)."""
    return "text" if type_name.endswith("]") else type_name


def _type(name: str) -> sql.Composable:
    # A type name as the catalog spells it (format_type: quoted where it must be), not input.
    return sql.SQL(name)
