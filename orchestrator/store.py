"""The dispatcher's database verbs: claim, finish, heartbeat, requeue, release.

Installing workflows is install.py's job and what operators read and redrive is reports.py's;
with db.py these are the modules that talk to psycopg. Verbs take and return domain objects
(Event, Result, Workflow); driver errors leave as StoreError or DatabaseUnavailable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from orchestrator import install, slots
from orchestrator.db import Transaction, borrowed, is_connection_error, one_line, translated
from orchestrator.errors import DatabaseUnavailable, RelatedDataError
from orchestrator.events import Event, event_from_row
from orchestrator.outcomes import EventStatus, FinishReport, Outcome, Pruned, Result
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
            with conn.pipeline():  # the statements and the commit: one round trip
                conn.execute(QUERIES["index_plans"])
                cur = conn.cursor(row_factory=dict_row).execute(query, params)
                conn.commit()
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
        _rollback(conn)
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
            _rollback(conn)
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
        # round trip; statements still run in order inside one transaction.
        finished = [r.event for r in results if r.outcome is not Outcome.RETRY]
        with conn.pipeline():
            conn.execute(QUERIES["index_plans"])
            conn.execute(QUERIES["write_settings"],
                         self._write_settings | {"quiet": "on" if quiet else "off"})
            sent = self._send_statements(conn, results)
            for r in results:
                if r.error is not None:
                    conn.execute(QUERIES["record_error"], {
                        "id": r.event.id, "attempt": r.event.attempt, "error": r.error})
            handoff = conn.cursor(row_factory=dict_row).execute(QUERIES["claim_next_of_rows"], {
                "dispatcher": self.dispatcher, "lease_s": self.lease_s,
                "workflows": [e.workflow for e in finished], "keys": [e.key for e in finished],
            })
            if commit:
                conn.commit()
        return FinishReport(_outcomes(sent), [event_from_row(row) for row in handoff.fetchall()])

    def _send_statements(self, conn: psycopg.Connection[Any], results: Sequence[Result]
                         ) -> list[Sent]:
        """Send each result's statement; those sharing a statement go out in one executemany,
        which spares psycopg the per-statement work of separate executes, and those writing
        nothing to their row in one finish_many."""
        plain = [r for r in results if r.outcome is not Outcome.RETRY and r.next is None]
        groups: dict[Any, list[tuple[Result, dict[str, Any]]]] = {}
        for r in results:
            if r.outcome is Outcome.RETRY or r.next is not None:
                query, params = self._statement(r, conn)
                groups.setdefault(query, []).append((r, params))
        sent = []
        for query, members in groups.items():
            cur = conn.cursor()
            cur.executemany(query, [params for _, params in members], returning=True)
            sent.append(Sent(cur, [r for r, _ in members]))
        if plain:
            sent.append(Sent(conn.execute(QUERIES["finish_many"], {
                "ids": [r.event.id for r in plain], "attempts": [r.event.attempt for r in plain],
                "statuses": [r.status.value for r in plain],
                "outcomes": [r.outcome.value for r in plain],
                "handlers": [r.handler for r in plain], "errors": [r.error for r in plain],
                "dispatcher": self.dispatcher}), plain, by_id=True))
        return sent

    def _statement(self, r: Result, conn: psycopg.Connection[Any]) -> tuple[Any, dict[str, Any]]:
        e = r.event
        params: dict[str, Any] = {
            "id": e.id, "attempt": e.attempt, "dispatcher": self.dispatcher,
            "handler": r.handler, "error": r.error,
        }
        if r.outcome is Outcome.RETRY:
            return QUERIES["retry"], params | {"delay_s": r.delay_s}
        status, outcome = r.status.value, r.outcome.value
        assert r.next is not None  # the others go out in one finish_many
        wf = self._workflows[e.workflow]
        values = dict(r.next.values)
        if r.next.state is not None and wf.column is not None:
            values[wf.column] = r.next.state
        params |= {
            "status": status, "outcome": outcome,
            "stale_outcome": (Outcome.DEAD if r.status is EventStatus.DEAD
                              else Outcome.STALE).value,
            "next_state": r.next.state, "key": e.key,
        }
        names, seen = tuple(sorted(values)), _seen_columns(wf, e)
        params |= {f"v_{i}": _adapt(values[name]) for i, name in enumerate(names)}
        params |= {f"e_{i}": e.new_row.get(name) for i, name in enumerate(seen)}
        return self._write_back_sql(wf, names, seen, conn), params

    def _write_back_sql(self, wf: Workflow, names: tuple[str, ...], seen: tuple[str, ...],
                        conn: psycopg.Connection[Any]) -> bytes:
        # Kept as bytes: psycopg would compose a sql.Composed again on every execute of every
        # write-back; composed once per workflow and set of columns, it is sent as it is.
        cache_key = (wf.name, names, seen)
        if (query := self._write_back.get(cache_key)) is None:
            assignments = sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(f"v_{i}"))
                for i, name in enumerate(names))
            expected = sql.SQL(" AND ").join(
                sql.SQL("{} IS NOT DISTINCT FROM {}").format(sql.Identifier(name),
                                                             sql.Placeholder(f"e_{i}"))
                for i, name in enumerate(seen)) if seen else sql.SQL("true")
            query = sql.SQL(QUERIES["write_back"]).format(
                table=sql.Identifier(wf.schema, wf.table), key=sql.Identifier(wf.key),
                expected=expected, assignments=assignments).as_bytes(conn)
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
                "ids": list(ids), "dispatcher": self.dispatcher, "lease_s": self.lease_s})

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

    def transaction(self, *, pooled: bool) -> Transaction:
        """A transaction for a handler's own writes; it takes a pooled connection only when
        first used. ``pooled``: connections go through a transaction-mode pooler."""
        return Transaction(self.pool, pooled=pooled)

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
                self._columns[wf.name] = install.table_columns(conn, wf)
                self._workflows[wf.name] = wf

    def verify_workflows(self, workflows: Sequence[Workflow]) -> None:
        """Raise as use_workflows does when the installed definitions changed since."""
        with self._conn() as conn:
            install.verify(conn, workflows)

    def columns(self, workflow: str) -> frozenset[str]:
        """The columns of a workflow's table, as read by use_workflows."""
        return self._columns[workflow]


def _seen_columns(wf: Workflow, event: Event) -> tuple[str, ...]:
    """The columns whose values the write-back of ``event`` compares with those the event saw:
    the state column, and the column the event is about (a deadline timer's is the state
    column). A json value is not compared (json has no equality)."""
    columns = [c for c in (wf.column, event.column) if c is not None]
    return tuple(c for c in dict.fromkeys(columns)
                 if not isinstance(event.new_row.get(c), dict | list))


class RelatedReader:
    """Reads the related data workflows declare (``orchestrator.related``) for claimed events."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self._composed: dict[tuple[str, str], bytes] = {}

    def read(self, events: Sequence[Event], workflows: Mapping[str, Workflow]
             ) -> tuple[list[Event], list[tuple[Event, RelatedDataError]]]:
        """As Store.with_related, for ``events`` of ``workflows``."""
        groups: dict[str, list[Event]] = {}
        for e in events:
            if workflows[e.workflow].related:
                groups.setdefault(e.workflow, []).append(e)
        if not groups:
            return list(events), []
        found: dict[int, dict[str, Any]] = {}
        errors: dict[str, RelatedDataError] = {}
        try:
            found = self._read(workflows, list(groups.values()))
        except RelatedDataError:  # which workflow's? each on its own
            for workflow, group in groups.items():
                try:
                    found |= self._read(workflows, [group])
                except RelatedDataError as exc:
                    errors[workflow] = exc
        ready = [replace(e, related=MappingProxyType(found[e.id])) if e.id in found else e
                 for e in events if e.workflow not in errors]
        return ready, [(e, errors[e.workflow]) for e in events if e.workflow in errors]

    def _read(self, workflows: Mapping[str, Workflow], groups: Sequence[Sequence[Event]]
              ) -> dict[int, dict[str, Any]]:
        """Each event's related data, by event id: one executemany per declaration, all in
        one pipeline. Raises RelatedDataError when a query fails."""
        sent: list[tuple[str, Sequence[Event], psycopg.Cursor[Any]]] = []
        with borrowed(self.pool) as conn:
            try:
                with conn.pipeline():
                    for group in groups:
                        wf = workflows[group[0].workflow]
                        for name, rel in wf.related.items():
                            cur = conn.cursor()
                            cur.executemany(self._sql(wf, name, conn), [
                                {k: _adapt(v) for k, v in rel.params(wf.key, e.new_row).items()}
                                for e in group], returning=True)
                            sent.append((name, group, cur))
                    conn.commit()
            except psycopg.Error as exc:
                _rollback(conn)
                if is_connection_error(exc, conn):
                    raise DatabaseUnavailable(f"database error: {one_line(exc)}") from exc
                raise RelatedDataError(groups[0][0].workflow, one_line(exc)) from exc
        found: dict[int, dict[str, Any]] = {}
        for name, group, cur in sent:
            for i, e in enumerate(group):
                if i:
                    cur.nextset()
                row = cur.fetchone()
                found.setdefault(e.id, {})[name] = row[0] if row else None
        return found

    def _sql(self, wf: Workflow, name: str, conn: psycopg.Connection[Any]) -> bytes:
        # Composed once per declaration, as the write-backs are.
        if (query := self._composed.get((wf.name, name))) is None:
            query = install.related_query(wf.related[name]).as_bytes(conn)
            self._composed[(wf.name, name)] = query
        return query


def _adapt(value: Any) -> Any:
    """Dicts and lists go to json/jsonb columns."""
    return Jsonb(value) if isinstance(value, dict | list) else value


@dataclass(frozen=True, slots=True)
class Sent:
    """A statement sent for ``members``: one result set per member, in order, or with
    ``by_id`` one result set of (id, outcome) rows."""

    cursor: psycopg.Cursor[Any]
    members: list[Result]
    by_id: bool = False


def _outcomes(sent: list[Sent]) -> dict[int, Outcome]:
    """Each written event's outcome, from the result sets of _send_statements; an event with
    no row was no longer ours."""
    outcomes: dict[int, Outcome] = {}
    for cur, members, by_id in ((s.cursor, s.members, s.by_id) for s in sent):
        if by_id:
            outcomes.update((row[0], Outcome(row[1])) for row in cur.fetchall())
            continue
        for i, r in enumerate(members):
            if i:
                cur.nextset()
            if (row := cur.fetchone()) is not None:
                outcomes[r.event.id] = Outcome(row[0])
    return outcomes


def _rollback(conn: psycopg.Connection[Any]) -> None:
    with suppress(psycopg.Error):  # a broken connection: the pool discards it
        conn.rollback()
