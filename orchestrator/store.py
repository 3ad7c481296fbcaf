"""Every database verb the engine needs: claim, finish, heartbeat, requeue, release, install.

With db.py, the only module that talks to psycopg. Verbs take and return domain objects (Event,
Result, Workflow); driver errors leave as StoreError or DatabaseUnavailable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from orchestrator.db import Transaction, borrowed, one_line
from orchestrator.errors import DatabaseUnavailable, DefinitionError, NotMigrated, StoreError
from orchestrator.events import Event, event_from_row
from orchestrator.outcomes import EventStatus, FinishReport, Outcome, Result
from orchestrator.sql import QUERIES
from orchestrator.workflow import Workflow

log = logging.getLogger(__name__)

# The dashboard's stuck-row queries look at no more rows than this per call.
EXAMINE_ROWS = 20_000
CLAIM_KINDS = {  # the claim query's variants: which pending events, in which order
    "plain": ("e.op <> 'TIMER' AND NOT e.suspect", "e.id"),
    "suspect": ("e.op <> 'TIMER' AND e.suspect", "e.id"),
    "timer": ("e.op = 'TIMER'", "e.run_after"),
}


def is_connection_error(exc: BaseException, conn: psycopg.Connection[Any] | None = None) -> bool:
    """Whether ``exc`` means the server or the connection is gone (as opposed to a bad query)."""
    if conn is not None and (conn.broken or conn.closed):
        return True
    if isinstance(exc, psycopg.errors.AdminShutdown | psycopg.errors.CrashShutdown
                  | psycopg.errors.CannotConnectNow):
        return True
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        state = getattr(exc, "sqlstate", None)
        return state is None or state.startswith("08")
    return False


@contextmanager
def translated(conn: psycopg.Connection[Any] | None = None) -> Iterator[None]:
    """Turn driver errors into StoreError subclasses (passwords redacted)."""
    try:
        yield
    except psycopg.errors.UndefinedTable as exc:
        raise NotMigrated(f"{NotMigrated.__doc__} ({_first_line(exc)})") from exc
    except psycopg.Error as exc:
        kind = DatabaseUnavailable if is_connection_error(exc, conn) else StoreError
        raise kind(f"database error: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    return one_line(exc)


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
        self._write_back: dict[tuple[str, tuple[str, ...]], bytes] = {}
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
                cur = conn.execute(query, params)
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
                raise DatabaseUnavailable(f"database error: {_first_line(exc)}") from exc
            if len(results) == 1:
                return FinishReport(rejected=[(results[0], _first_line(exc))])
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
            handoff = conn.execute(QUERIES["claim_next_of_rows"], {
                "dispatcher": self.dispatcher, "lease_s": self.lease_s,
                "workflows": [e.workflow for e in finished], "keys": [e.key for e in finished],
            })
            if commit:
                conn.commit()
        return FinishReport(_outcomes(sent), [event_from_row(row) for row in handoff.fetchall()])

    def _send_statements(
        self, conn: psycopg.Connection[Any], results: Sequence[Result]
    ) -> list[tuple[psycopg.Cursor[Any], list[Result]]]:
        """Send each result's statement; those sharing a statement go out in one executemany,
        which spares psycopg the per-statement work of separate executes."""
        groups: dict[Any, list[tuple[Result, dict[str, Any]]]] = {}
        for r in results:
            query, params = self._statement(r, conn)
            groups.setdefault(query, []).append((r, params))
        sent = []
        for query, members in groups.items():
            cur = conn.cursor()
            cur.executemany(query, [params for _, params in members], returning=True)
            sent.append((cur, [r for r, _ in members]))
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
        if r.next is None:
            return QUERIES["finish"], params | {"status": status, "outcome": outcome}
        wf = self._workflows[e.workflow]
        values = dict(r.next.values)
        if r.next.state is not None:
            values[wf.column] = r.next.state
        params |= {
            "status": status, "outcome": outcome,
            "stale_outcome": (Outcome.DEAD if r.status is EventStatus.DEAD
                              else Outcome.STALE).value,
            "next_state": r.next.state, "key": e.key, "expected": e.new_row.get(wf.column),
        }
        names = tuple(sorted(values))
        params |= {f"v_{i}": _adapt(values[name]) for i, name in enumerate(names)}
        return self._write_back_sql(wf, names, conn), params

    def _write_back_sql(self, wf: Workflow, names: tuple[str, ...],
                        conn: psycopg.Connection[Any]) -> bytes:
        # Kept as bytes: psycopg would compose a sql.Composed again on every execute of every
        # write-back; composed once per workflow and set of columns, it is sent as it is.
        cache_key = (wf.name, names)
        if (query := self._write_back.get(cache_key)) is None:
            assignments = sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(f"v_{i}"))
                for i, name in enumerate(names))
            query = sql.SQL(QUERIES["write_back"]).format(
                table=sql.Identifier(wf.schema, wf.table), key=sql.Identifier(wf.key),
                state=sql.Identifier(wf.column), assignments=assignments).as_bytes(conn)
            self._write_back[cache_key] = query
        return query

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

    def has_open_events(self) -> bool:
        """Whether any event of these workflows is pending (due or not) or running, by any
        dispatcher."""
        with self._conn() as conn:
            row = conn.execute(QUERIES["has_open_events"],
                               {"workflows": list(self._workflows)}).fetchone()
        return bool(row and row[0])

    def transaction(self, *, pooled: bool) -> Transaction:
        """A transaction for a handler's own writes; it takes a pooled connection only when
        first used. ``pooled``: connections go through a transaction-mode pooler."""
        return Transaction(self.pool, pooled=pooled)

    def terminate_backend(self, pid: int) -> None:
        """End a server session (a hung handler's transaction), releasing its locks."""
        with self._conn() as conn:
            conn.execute(QUERIES["terminate_backend"], {"pid": pid})

    # -- operator verbs ----------------------------------------------------------------------

    def rows(self, query: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run the named query and return its rows as dicts (for reports)."""
        with self._conn() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(QUERIES[query], params or {})
            return cur.fetchall() if cur.description else []

    def insert_many(self, query: str, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Run the named statement once per row in one transaction; the first column each
        RETURNING gave (None where there is no RETURNING)."""
        with self._conn() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(QUERIES[query], [_adapt_all(row) for row in rows], returning=True)
            out: list[Any] = []
            while True:
                out.append(row[0] if cur.description and (row := cur.fetchone()) else None)
                if not cur.nextset():
                    return out

    def state_counts(self, wf: Workflow) -> dict[str, int]:
        """How many rows of ``wf`` are in each state (states with none are absent)."""
        query = sql.SQL("SELECT {state}, count(*) FROM {table} GROUP BY 1").format(
            state=sql.Identifier(wf.column), table=sql.Identifier(wf.schema, wf.table))
        with self._conn() as conn:
            return {str(k): int(v) for k, v in conn.execute(query).fetchall()}

    def row_state(self, wf: Workflow, key: str) -> str | None:
        """The state of one row, or None when there is no such row."""
        query = sql.SQL("SELECT {state} FROM {table} WHERE {key} = %(key)s").format(
            state=sql.Identifier(wf.column), table=sql.Identifier(wf.schema, wf.table),
            key=sql.Identifier(wf.key))
        with self._conn() as conn:
            row = conn.execute(query, {"key": key}).fetchone()
        return None if row is None else str(row[0])

    def rows_in_states(self, wf: Workflow, states: Sequence[str], *, older_than_s: float = 0.0,
                       oldest_first: bool = True, limit: int = 100,
                       examine: int = EXAMINE_ROWS) -> list[dict[str, Any]]:
        """Rows of ``wf`` in ``states`` for at least ``older_than_s``, with when they entered
        the state, their latest event and next deadline (the ``rows_in_states`` query), among
        the first ``examine`` rows in those states."""
        return self._rows_of(wf, "rows_in_states", {
            "states": list(states), "older_than_s": older_than_s, "oldest_first": oldest_first,
            "limit": limit, "examine": examine})

    def stuck_counts(self, wf: Workflow, states: Sequence[str], older_than_s: float, *,
                     examine: int = EXAMINE_ROWS) -> dict[str, int]:
        """How many rows of ``wf`` have been in each of ``states`` for ``older_than_s``, among
        the first ``examine`` rows in those states."""
        rows = self._rows_of(wf, "stuck_counts", {"states": list(states),
                                                 "older_than_s": older_than_s,
                                                 "examine": examine})
        return {r["state"]: int(r["rows"]) for r in rows}

    def _rows_of(self, wf: Workflow, query: str,
                 params: dict[str, Any]) -> list[dict[str, Any]]:
        composed = sql.SQL(QUERIES[query]).format(
            table=sql.Identifier(wf.schema, wf.table), key=sql.Identifier(wf.key),
            state=sql.Identifier(wf.column))
        with self._conn() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(composed, params | {"workflow": wf.name, "column": wf.column})
            return cur.fetchall()

    def move(self, wf: Workflow, key: str, source: str, dest: str) -> bool:
        """Move one row from ``source`` to ``dest`` (compare-and-set); False if it was no longer
        in ``source``. The guard trigger still applies."""
        with self._conn() as conn:
            return self._move(conn, wf, key, source, dest) == 1

    @staticmethod
    def _move(conn: psycopg.Connection[Any], wf: Workflow, key: str, source: str,
              dest: str) -> int:
        query = sql.SQL("UPDATE {table} SET {state} = %(dest)s"
                        " WHERE {key} = %(key)s AND {state} = %(source)s").format(
            state=sql.Identifier(wf.column), table=sql.Identifier(wf.schema, wf.table),
            key=sql.Identifier(wf.key))
        return conn.execute(query, {"key": key, "source": source, "dest": dest}).rowcount

    def redrive(self, workflows: Mapping[str, Workflow], *, ids: Sequence[int] = (),
                all_dead: bool = False, handler: str | None = None,
                workflow: str | None = None, dry_run: bool = False) -> list[dict[str, Any]]:
        """Put dead events back in the queue with fresh attempts, in one transaction; the
        redriven events. A row their death moved to its workflow's failure state goes back to
        the state the event saw (an operator override of the guard)."""
        params = {"ids": list(ids), "all": all_dead, "handler": handler, "workflow": workflow}
        with self._conn() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            dead = cur.execute(QUERIES["dead_events"], params).fetchall()
            if dry_run or not dead:
                return dead
            chosen = [d["id"] for d in dead]
            cur.execute(QUERIES["redrive"], {"ids": chosen})
            cur.execute(QUERIES["record_redrive"], {"ids": chosen})
            cur.execute(QUERIES["override"])
            for d in dead:
                wf = workflows.get(d["workflow"])
                if wf and wf.failure_state:
                    saw = d["new_row"].get(wf.column)
                    self._move(conn, wf, d["row_key"], wf.failure_state, saw)
            return dead

    # -- workflows ---------------------------------------------------------------------------

    def installed_workflows(self) -> list[Workflow]:
        """The workflows as last installed by `orchestrator migrate` (no handler code needed).
        Raises NotMigrated before the first migration."""
        with self._conn() as conn:
            if not conn.execute(QUERIES["schema_present"]).fetchone()[0]:  # type: ignore[index]
                raise NotMigrated()
            rows = conn.execute(QUERIES["installed_workflows"]).fetchall()
        return [Workflow.from_definition(definition) for _, definition in rows]

    def use_workflows(self, workflows: Sequence[Workflow]) -> None:
        """Check each workflow is installed as defined and remember it for write-backs.

        Raises NotMigrated when the schema or a workflow is missing, DefinitionError when the
        database holds a different definition (another version of the handlers migrated last).
        """
        with self._conn() as conn:
            self._verify(conn, workflows)
            for wf in workflows:
                self._columns[wf.name] = self._table_columns(conn, wf)
                self._workflows[wf.name] = wf

    def verify_workflows(self, workflows: Sequence[Workflow]) -> None:
        """Raise as use_workflows does when the installed definitions changed since."""
        with self._conn() as conn:
            self._verify(conn, workflows)

    @staticmethod
    def _verify(conn: psycopg.Connection[Any], workflows: Sequence[Workflow]) -> None:
        if not conn.execute(QUERIES["schema_present"]).fetchone()[0]:  # type: ignore[index]
            raise NotMigrated()
        installed = dict(conn.execute(QUERIES["installed_workflows"]).fetchall())
        for wf in workflows:
            if wf.name not in installed:
                raise NotMigrated(f"workflow {wf.name!r} is not installed in the database: "
                                  "run `orchestrator migrate`")
            if (problem := _difference(installed[wf.name], wf.definition())) is not None:
                raise DefinitionError(
                    f"workflow {wf.name!r}: {problem}; every dispatcher must run the handlers "
                    "that `orchestrator migrate` installed last")

    def columns(self, workflow: str) -> frozenset[str]:
        """The columns of a workflow's table, as read by use_workflows."""
        return self._columns[workflow]

    @staticmethod
    def _table_columns(conn: psycopg.Connection[Any], wf: Workflow) -> frozenset[str]:
        rows = conn.execute(QUERIES["table_columns"], {"table": wf.qualified_table}).fetchall()
        return frozenset(row[0] for row in rows)

    def install_workflow(self, wf: Workflow) -> None:
        """Record ``wf`` and (re)create its guard and capture triggers, in one transaction.

        Raises DefinitionError when its table, key or state column does not exist.
        """
        with self._conn() as conn, conn.transaction():
            columns = self._table_columns(conn, wf)
            if not columns:
                raise DefinitionError(f"workflow {wf.name!r}: table {wf.qualified_table} does "
                                      "not exist; create it in a migration first")
            for col in (wf.key, wf.column, *wf.watch):
                if col not in columns:
                    raise DefinitionError(
                        f"workflow {wf.name!r}: table {wf.qualified_table} has no column {col!r}")
            conn.execute(QUERIES["upsert_workflow"], {
                "name": wf.name, "table": wf.qualified_table, "key": wf.key,
                "column": wf.column, "initial": wf.initial, "definition": Jsonb(wf.definition()),
            })
            conn.execute(QUERIES["delete_transitions"], {"name": wf.name})
            conn.execute(QUERIES["delete_deadlines"], {"name": wf.name})
            with conn.cursor() as cur:
                cur.executemany(QUERIES["insert_transition"], [
                    {"name": wf.name, "source": t.source, "dest": t.dest, "trigger": t.trigger}
                    for t in wf.transitions])
                cur.executemany(QUERIES["insert_deadline"], [
                    {"name": wf.name, "state": d.state, "after_s": d.after_s, "dest": d.to}
                    for d in wf.deadlines])
            for statement in _trigger_ddl(wf, conn):
                conn.execute(statement)


def _difference(installed: Mapping[str, Any], mine: Mapping[str, Any]) -> str | None:
    """What differs between the installed definition and this dispatcher's, or None."""
    if installed == mine:
        return None
    if {k: v for k, v in installed.items() if k != "handlers"} != \
            {k: v for k, v in mine.items() if k != "handlers"}:
        return "the states or transitions in the database differ from this dispatcher's"
    theirs, ours = installed.get("handlers", {}), mine["handlers"]
    parts = [f"{what}: {', '.join(sorted(routes))}" for what, routes in (
        ("missing here", set(theirs) - set(ours)), ("not installed", set(ours) - set(theirs)),
        ("other handler", {r for r in set(ours) & set(theirs) if ours[r] != theirs[r]}))
        if routes]
    return "this dispatcher's handlers differ from the installed ones (" + "; ".join(parts) + ")"


def _adapt(value: Any) -> Any:
    """Dicts and lists go to json/jsonb columns."""
    return Jsonb(value) if isinstance(value, dict | list) else value


def _adapt_all(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _adapt(v) for k, v in row.items()}


def _outcomes(sent: list[tuple[psycopg.Cursor[Any], list[Result]]]) -> dict[int, Outcome]:
    """Each written event's outcome, from the result sets of _send_statements (one per
    result, in order); an event with no row was no longer ours."""
    outcomes: dict[int, Outcome] = {}
    for cur, members in sent:
        for i, r in enumerate(members):
            if i:
                cur.nextset()
            if (row := cur.fetchone()) is not None:
                outcomes[r.event.id] = Outcome(row[0])
    return outcomes


def _rollback(conn: psycopg.Connection[Any]) -> None:
    with suppress(psycopg.Error):  # a broken connection: the pool discards it
        conn.rollback()


def _trigger_name(wf: Workflow, suffix: str) -> str:
    return f"orchestrator_{wf.name}_{suffix}"[:63]


def _trigger_ddl(wf: Workflow, conn: psycopg.Connection[Any]) -> list[sql.Composed]:
    """CREATE OR REPLACE the guard and capture triggers; DROP captures of unwatched columns."""
    table = sql.Identifier(wf.schema, wf.table)
    name, key, state = sql.Literal(wf.name), sql.Literal(wf.key), sql.Literal(wf.column)

    def trigger(suffix: str, timing: str, event: sql.Composable, func: str,
                args: list[sql.Composable], when: sql.Composable | None = None) -> sql.Composed:
        return sql.SQL(
            "CREATE OR REPLACE TRIGGER {name} " + timing + " {event} ON {table} FOR EACH ROW "
            "{when} EXECUTE FUNCTION " + func + "({args})"
        ).format(name=sql.Identifier(_trigger_name(wf, suffix)), event=event, table=table,
                 when=sql.SQL("WHEN ({})").format(when) if when else sql.SQL(""),
                 args=sql.SQL(", ").join(args))

    def update_of(column: str) -> tuple[sql.Composable, sql.Composable]:
        col = sql.Identifier(column)
        return (sql.SQL("UPDATE OF {}").format(col),
                sql.SQL("OLD.{c} IS DISTINCT FROM NEW.{c}").format(c=col))

    state_event, state_changed = update_of(wf.column)
    # The state column's captures also keep the row's deadline timers.
    timers = [sql.Literal("deadlines")] if wf.deadlines else []
    wanted = {
        "guard_insert": trigger("guard_insert", "BEFORE", sql.SQL("INSERT"),
                                "orchestrator.guard_v1", [name, state]),
        "guard_update": trigger("guard_update", "BEFORE", state_event, "orchestrator.guard_v1",
                                [name, state], state_changed),
        "capture_insert": trigger("capture_insert", "AFTER", sql.SQL("INSERT"),
                                  "orchestrator.capture_v1", [name, key, state, *timers]),
    }
    # Triggers of one timing fire in name order: the state column's capture comes first.
    for rank, column in enumerate((wf.column, *wf.watch)):
        event, changed = update_of(column)
        suffix = f"capture_{rank}_{column}"
        extra = timers if column == wf.column else []
        wanted[suffix] = trigger(suffix, "AFTER", event, "orchestrator.capture_v1",
                                 [name, key, sql.Literal(column), *extra], changed)
    existing = conn.execute(QUERIES["capture_triggers"], {
        "table": wf.qualified_table, "prefix": _trigger_name(wf, "") + "%"}).fetchall()
    keep = {_trigger_name(wf, suffix) for suffix in wanted}
    drops: list[sql.Composed] = [
        sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(tg), table)
        for (tg,) in existing if tg not in keep]
    return [*drops, *wanted.values()]
