"""Installing workflows: each one's definition, legal transitions and deadlines in the
orchestrator schema, and its guard and capture triggers on the application's table.

Every function takes an open psycopg connection and works inside its transaction, so an
application's own Alembic revision can install a workflow together with the table it creates
(see ``orchestrator.schema.install``). With db.py and store.py, one of the modules that talk to
psycopg.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from orchestrator.db import one_line
from orchestrator.errors import DefinitionError, NotMigrated
from orchestrator.names import MAX_IDENTIFIER_BYTES
from orchestrator.related import Related
from orchestrator.routing import Values
from orchestrator.sql import INSTALL, QUERIES
from orchestrator.workflow import Workflow


def schema_present(conn: psycopg.Connection[Any]) -> bool:
    """Whether the orchestrator schema has been migrated into this database."""
    row = conn.execute(INSTALL["schema_present"]).fetchone()
    return bool(row and row[0])


def installed_definitions(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    """Each installed workflow's definition, by name. Raises NotMigrated before the first
    migration."""
    if not schema_present(conn):
        raise NotMigrated()
    return dict(conn.execute(INSTALL["installed_workflows"]).fetchall())


def installed_workflows(conn: psycopg.Connection[Any]) -> list[Workflow]:
    """The workflows as last installed (no handler code needed). Raises NotMigrated."""
    return [Workflow.from_definition(d) for d in installed_definitions(conn).values()]


def verify(conn: psycopg.Connection[Any], workflows: Sequence[Workflow]) -> None:
    """Raise NotMigrated when the schema is missing or older than this version, or one of
    ``workflows`` is not installed, and DefinitionError when the database holds another
    definition of one (other handlers were migrated last)."""
    installed = installed_definitions(conn)
    _check_version(conn)
    for wf in workflows:
        if wf.name not in installed:
            raise NotMigrated(f"workflow {wf.name!r} is not installed in the database: "
                              "run `orchestrator migrate`")
        if (problem := difference(installed[wf.name], wf.definition())) is not None:
            raise DefinitionError(
                f"workflow {wf.name!r}: {problem}; every dispatcher must run the handlers "
                "that `orchestrator migrate` installed last")


def difference(installed: Mapping[str, Any], mine: Mapping[str, Any]) -> str | None:
    """What differs between an installed definition and this process's, or None."""
    if installed == mine:
        return None
    handling = ("handlers", "related", "limits")
    if {k: v for k, v in installed.items() if k not in handling} != \
            {k: v for k, v in mine.items() if k not in handling}:
        return "the states or transitions in the database differ from this dispatcher's"
    if installed.get("related") != mine.get("related"):
        return "the related data declared in the database differs from this dispatcher's"
    if installed.get("handlers") == mine.get("handlers"):
        return "this dispatcher's handler limits differ from the installed ones"
    theirs, ours = installed.get("handlers", {}), mine["handlers"]
    parts = [f"{what}: {', '.join(sorted(routes))}" for what, routes in (
        ("missing here", set(theirs) - set(ours)), ("not installed", set(ours) - set(theirs)),
        ("other handler", {r for r in set(ours) & set(theirs) if ours[r] != theirs[r]}))
        if routes]
    return "this dispatcher's handlers differ from the installed ones (" + "; ".join(parts) + ")"


def column_types(conn: psycopg.Connection[Any], wf: Workflow) -> dict[str, str]:
    """The columns of ``wf``'s table and their types, as casts name them (empty when there is
    no such table)."""
    return dict(conn.execute(INSTALL["column_types"],
                             {"schema": wf.schema, "table": wf.table}).fetchall())


def install_workflow(conn: psycopg.Connection[Any], wf: Workflow) -> None:
    """Record ``wf`` and (re)create its guard and capture triggers, in the connection's
    current transaction. Raises NotMigrated before the schema exists (or when it is older than
    the trigger functions this version installs), DefinitionError when the table, key or a
    watched column does not exist, or a declaration of related data does not fit the
    database."""
    if not schema_present(conn):
        raise NotMigrated()
    _check_version(conn)
    columns = _check_table(conn, wf)
    _check_related(conn, wf, columns)
    # A workflow without a state column is stored with '' for it and its initial state.
    conn.execute(INSTALL["upsert_workflow"], {
        "name": wf.name, "table": wf.qualified_table, "key": wf.key, "column": wf.column or "",
        "initial": wf.initial or "", "definition": Jsonb(wf.definition())})
    conn.execute(INSTALL["delete_transitions"], {"name": wf.name})
    conn.execute(INSTALL["delete_deadlines"], {"name": wf.name})
    with conn.cursor() as cur:
        cur.executemany(INSTALL["insert_transition"], [
            {"name": wf.name, "source": t.source, "dest": t.dest, "trigger": t.trigger}
            for t in wf.transitions])
        cur.executemany(INSTALL["insert_deadline"], [
            {"name": wf.name, "state": d.state, "after_s": d.after_s, "dest": d.to}
            for d in wf.deadlines])
    _install_limits(conn, wf)
    for statement in trigger_ddl(conn, wf):
        try:
            conn.execute(statement)
        except psycopg.errors.DataError as exc:  # a column route's value the column refuses
            raise DefinitionError(f"workflow {wf.name!r}: a column route names a value its "
                                  f"column cannot hold: {str(exc).splitlines()[0]}") from exc


def _check_version(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(INSTALL["functions_present"]).fetchone()
    if not (row and row[0]):
        raise NotMigrated("the orchestrator schema is older than this version: run "
                          "`orchestrator migrate` first")


def _install_limits(conn: psycopg.Connection[Any], wf: Workflow) -> None:
    """Write the fleet-wide limits of ``wf``'s handlers. Raises NotMigrated when the schema
    predates them."""
    limits = {spec.limit for spec in wf.handlers if spec.limit is not None}
    if not limits:
        return
    row = conn.execute(INSTALL["limits_present"]).fetchone()
    if not (row and row[0]):
        raise NotMigrated("the orchestrator schema is older than handler limits: run "
                          "`orchestrator migrate` first")
    for limit in sorted(limits, key=lambda lim: str(lim.name)):
        params = {"name": limit.name, "max_running": limit.max_running, "per_s": limit.per_s,
                  "burst": max(1.0, limit.per_s or 1.0)}
        conn.execute(INSTALL["upsert_limit"], params)
        conn.execute(INSTALL["size_limit_slots"], params)


def _check_table(conn: psycopg.Connection[Any], wf: Workflow) -> frozenset[str]:
    """``wf``'s table's columns. Raises DefinitionError when the table or a column ``wf``
    names is missing, or its generated state column would be written."""
    columns = frozenset(column_types(conn, wf))
    if not columns:
        raise DefinitionError(f"workflow {wf.name!r}: table {wf.qualified_table} does not "
                              "exist; create it in a migration first")
    for col in (wf.key, *([wf.column] if wf.column else []), *wf.watch):
        if col not in columns:
            raise DefinitionError(
                f"workflow {wf.name!r}: table {wf.qualified_table} has no column {col!r}")
    if (wf.deadlines or wf.failure_state) and _generated(conn, wf):
        raise DefinitionError(
            f"workflow {wf.name!r}: its state column {wf.column!r} is generated by PostgreSQL, "
            "so deadlines and a failure state, which write it, cannot move its rows")
    return columns


def _check_related(conn: psycopg.Connection[Any], wf: Workflow, own: frozenset[str]) -> None:
    """Raise DefinitionError, one line naming the declaration, unless each of ``wf``'s
    related data reads columns its table has and its query plans (EXPLAIN, with every
    parameter NULL, inside a savepoint); ``own``: the columns of its table."""
    for name, rel in wf.related.items():
        where = f"workflow {wf.name!r}: related {name!r}"
        if missing := [c for c in rel.row_columns(wf.key) if c not in own]:
            raise DefinitionError(f"{where}: table {wf.qualified_table} has no column "
                                  f"{missing[0]!r}")
        try:
            with conn.transaction():
                conn.execute(sql.SQL("EXPLAIN ") + related_query(rel),
                             dict.fromkeys(rel.params(wf.key, {})))
        except psycopg.Error as exc:
            raise DefinitionError(f"{where}: {one_line(exc)}") from None


def related_query(rel: Related) -> sql.Composed:
    """The query that reads ``rel`` for one row: one row, one jsonb value."""
    if rel.kind == "query":
        return sql.SQL(QUERIES["related_query"]).format(query=sql.SQL(rel.sql))
    column = rel.column if rel.kind == "children" else rel.key or "id"
    return sql.SQL(QUERIES[f"related_{rel.kind}"]).format(
        table=sql.Identifier(*rel.schema_table), column=sql.Identifier(column))


def trigger_name(wf: Workflow, suffix: str) -> str:
    """``orchestrator_<workflow>_<suffix>``; when that is longer than PostgreSQL keeps, its
    first 54 bytes (whole characters) and 8 hex digits of its SHA-256, so that two triggers of
    one workflow never share a name whatever the length of their columns' names. A workflow
    name has at most 30 bytes, so the cut never reaches the rank that orders captures."""
    name = f"orchestrator_{wf.name}_{suffix}"
    data = name.encode()
    if len(data) <= MAX_IDENTIFIER_BYTES:
        return name
    head = data[:MAX_IDENTIFIER_BYTES - 9].decode(errors="ignore")
    return f"{head}_{hashlib.sha256(data).hexdigest()[:8]}"


def trigger_ddl(conn: psycopg.Connection[Any], wf: Workflow) -> list[sql.Composed]:
    """CREATE OR REPLACE the guard and capture triggers; DROP the triggers the orchestrator
    made for ``wf`` earlier that it no longer wants (a column no longer watched, a name of an
    older version). Triggers of one timing fire in name order: the state column's capture
    comes first. A state column PostgreSQL generates from other columns has no guard: its new
    value is computed after BEFORE triggers run, and nobody writes it. Raises DefinitionError
    if two of its triggers would share a name, or one would replace a trigger the orchestrator
    did not make for ``wf`` (another workflow's on the same table, the application's own)."""
    specs = _trigger_specs(wf, guarded=wf.column is not None and not _generated(conn, wf))
    wanted = {trigger_name(wf, suffix): _trigger(wf, suffix, *spec) for suffix, spec in specs}
    if len(wanted) < len(specs):
        raise DefinitionError(f"workflow {wf.name!r}: two of its triggers would share a name")
    where = {"schema": wf.schema, "table": wf.table, "name": wf.name}
    own = {name for (name,) in conn.execute(INSTALL["own_triggers"], where).fetchall()}
    taken = {name for (name,) in conn.execute(INSTALL["table_triggers"], where).fetchall()}
    if clash := sorted((set(wanted) & taken) - own):
        raise DefinitionError(f"workflow {wf.name!r}: table {wf.qualified_table} already has a "
                              f"trigger {clash[0]!r} that is not this workflow's")
    drops = [sql.SQL(INSTALL["drop_trigger"]).format(
        name=sql.Identifier(name), table=sql.Identifier(wf.schema, wf.table))
        for name in sorted(own - set(wanted))]
    return [*drops, *wanted.values()]


# timing, the column whose UPDATE fires it (None: INSERT), function, arguments, condition
TriggerSpec = tuple[str, str | None, str, list[str], sql.Composable | None]


def _generated(conn: psycopg.Connection[Any], wf: Workflow) -> bool:
    row = conn.execute(INSTALL["column_generated"], {
        "schema": wf.schema, "table": wf.table, "column": wf.column}).fetchone()
    return bool(row and row[0])


def _trigger_specs(wf: Workflow, *, guarded: bool) -> list[tuple[str, TriggerSpec]]:
    """Each trigger of ``wf`` by name suffix. The state column (if any) has a guard on INSERT
    (BEFORE) and UPDATE (AFTER) and captures of both, which also keep the row's deadline
    timers and record arrivals no handler serves as finished; each watched column a capture
    of its UPDATEs, and one of INSERTs when a column route serves a change from NULL. A
    watched column whose handlers are column routes alone is captured only when one of them
    matches."""
    # The state column's captures: 'deadlines' or '', then the states whose arrival no
    # handler serves (recorded finished); none of either: the arguments capture_v2 took.
    unserved = wf.unserved_states()
    state_args = (["deadlines" if wf.deadlines else "", *unserved] if unserved
                  else ["deadlines"] if wf.deadlines else [])
    guard, capture = "orchestrator.guard_v2", "orchestrator.capture_v4"
    specs: list[tuple[str, TriggerSpec]] = []
    if wf.column is not None and guarded:
        specs += [
            ("guard_insert", ("BEFORE", None, guard, [wf.name, wf.column], None)),
            # AFTER: a BEFORE UPDATE row trigger has PostgreSQL lock the row before it runs,
            # a WAL record of its own for every state change; checked after the write, the
            # change is refused all the same (the statement fails, nothing of it is kept).
            ("guard_update", ("AFTER", wf.column, guard, [wf.name, wf.column],
                              _changed(wf.column))),
        ]
    if wf.column is not None:
        specs.append(("capture_insert", ("AFTER", None, capture,
                                         [wf.name, wf.key, wf.column, *state_args], None)))
    columns = [c for c in (wf.column, *wf.watch) if c is not None]
    # Triggers of one timing fire in name order: ranks of one width sort as numbers (10 after
    # 9), and a workflow with fewer than ten columns keeps the names it always had.
    width = len(str(len(columns) - 1))
    for number, column in enumerate(columns):
        rank = f"{number:0{width}d}"
        args = [wf.name, wf.key, column]
        extra = state_args if column == wf.column else []
        specs.append((f"capture_{rank}_{column}",
                      ("AFTER", column, capture, [*args, *extra], _update_when(wf, column))))
        if column != wf.column and (when := _insert_when(wf, column)) is not None:
            specs.append((f"insert_{rank}_{column}", ("AFTER", None, capture, args, when)))
    return specs


def _changed(column: str) -> sql.Composable:
    return sql.SQL("OLD.{c} IS DISTINCT FROM NEW.{c}").format(c=sql.Identifier(column))


def _update_when(wf: Workflow, column: str) -> sql.Composable:
    """A real change of ``column``; for a watched column served by column routes alone, one
    that one of them matches."""
    routes = wf.handlers.column_routes(column)
    if column == wf.column or not routes or any(
            s.route.column == column and s.route.change is None for s in wf.handlers):
        return _changed(column)
    matches = [sql.SQL("({} AND {})").format(_among("OLD", column, r.change.old),
                                             _among("NEW", column, r.change.new))
               for r in routes if r.change is not None]
    return sql.SQL("{} AND ({})").format(_changed(column), sql.SQL(" OR ").join(matches))


def _insert_when(wf: Workflow, column: str) -> sql.Composable | None:
    """For a watched column, the condition on a new row under which a column route serves its
    value as a change from NULL; None when no route does."""
    news = [r.change.new for r in wf.handlers.column_routes(column)
            if r.change is not None and (r.change.old is None or None in r.change.old)]
    if not news:
        return None
    return sql.SQL("NEW.{} IS NOT NULL AND ({})").format(
        sql.Identifier(column), sql.SQL(" OR ").join(_among("NEW", column, n) for n in news))


def _among(row: str, column: str, values: Values) -> sql.Composable:
    """``row.column`` is one of ``values`` (None: any); each value an untyped literal, which
    PostgreSQL reads in the column's own type."""
    if values is None:
        return sql.SQL("true")
    ref = sql.SQL("{}.{}").format(sql.SQL(row), sql.Identifier(column))
    return sql.SQL("({})").format(sql.SQL(" OR ").join(
        sql.SQL("{} IS NULL").format(ref) if v is None
        else sql.SQL("{} = {}").format(ref, sql.Literal(v)) for v in values))


def _trigger(wf: Workflow, suffix: str, timing: str, column: str | None, function: str,
             args: list[str], condition: sql.Composable | None) -> sql.Composed:
    event = (sql.SQL("INSERT") if column is None
             else sql.SQL("UPDATE OF {}").format(sql.Identifier(column)))
    when = (sql.SQL("") if condition is None
            else sql.SQL("WHEN ({})").format(condition))
    return sql.SQL(INSTALL["create_trigger"]).format(
        name=sql.Identifier(trigger_name(wf, suffix)), timing=sql.SQL(timing), event=event,
        table=sql.Identifier(wf.schema, wf.table), when=when,
        function=sql.Identifier(*function.split(".")),
        args=sql.SQL(", ").join(sql.Literal(a) for a in args))
