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

from orchestrator.errors import DefinitionError, NotMigrated
from orchestrator.sql import INSTALL
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
    """Raise NotMigrated when the schema or one of ``workflows`` is not installed, and
    DefinitionError when the database holds another definition of one (other handlers were
    migrated last)."""
    installed = installed_definitions(conn)
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
    handling = ("handlers", "limits")
    if {k: v for k, v in installed.items() if k not in handling} != \
            {k: v for k, v in mine.items() if k not in handling}:
        return "the states or transitions in the database differ from this dispatcher's"
    if installed.get("handlers") == mine.get("handlers"):
        return "this dispatcher's handler limits differ from the installed ones"
    theirs, ours = installed.get("handlers", {}), mine["handlers"]
    parts = [f"{what}: {', '.join(sorted(routes))}" for what, routes in (
        ("missing here", set(theirs) - set(ours)), ("not installed", set(ours) - set(theirs)),
        ("other handler", {r for r in set(ours) & set(theirs) if ours[r] != theirs[r]}))
        if routes]
    return "this dispatcher's handlers differ from the installed ones (" + "; ".join(parts) + ")"


def table_columns(conn: psycopg.Connection[Any], wf: Workflow) -> frozenset[str]:
    """The columns of ``wf``'s table (empty when there is no such table)."""
    rows = conn.execute(INSTALL["table_columns"],
                        {"schema": wf.schema, "table": wf.table}).fetchall()
    return frozenset(row[0] for row in rows)


def install_workflow(conn: psycopg.Connection[Any], wf: Workflow) -> None:
    """Record ``wf`` and (re)create its guard and capture triggers, in the connection's
    current transaction. Raises NotMigrated before the schema exists (or when it is older than
    the trigger functions this version installs), DefinitionError when the table, key or a
    watched column does not exist."""
    if not schema_present(conn):
        raise NotMigrated()
    row = conn.execute(INSTALL["functions_present"]).fetchone()
    if not (row and row[0]):
        raise NotMigrated("the orchestrator schema is older than this version: run "
                          "`orchestrator migrate` first")
    _check_table(conn, wf)
    conn.execute(INSTALL["upsert_workflow"], {
        "name": wf.name, "table": wf.qualified_table, "key": wf.key, "column": wf.column,
        "initial": wf.initial, "definition": Jsonb(wf.definition())})
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
        conn.execute(statement)


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


def _check_table(conn: psycopg.Connection[Any], wf: Workflow) -> None:
    columns = table_columns(conn, wf)
    if not columns:
        raise DefinitionError(f"workflow {wf.name!r}: table {wf.qualified_table} does not "
                              "exist; create it in a migration first")
    for col in (wf.key, wf.column, *wf.watch):
        if col not in columns:
            raise DefinitionError(
                f"workflow {wf.name!r}: table {wf.qualified_table} has no column {col!r}")


# PostgreSQL keeps at most this many bytes of a name.
MAX_NAME_BYTES = 63


def trigger_name(wf: Workflow, suffix: str) -> str:
    """``orchestrator_<workflow>_<suffix>``; when that is longer than PostgreSQL keeps, its
    first 54 bytes (whole characters) and 8 hex digits of its SHA-256, so that two triggers of
    one workflow never share a name whatever the length of their columns' names. A workflow
    name has at most 30 bytes, so the cut never reaches the rank that orders captures."""
    name = f"orchestrator_{wf.name}_{suffix}"
    data = name.encode()
    if len(data) <= MAX_NAME_BYTES:
        return name
    head = data[:MAX_NAME_BYTES - 9].decode(errors="ignore")
    return f"{head}_{hashlib.sha256(data).hexdigest()[:8]}"


def trigger_ddl(conn: psycopg.Connection[Any], wf: Workflow) -> list[sql.Composed]:
    """CREATE OR REPLACE the guard and capture triggers; DROP the triggers the orchestrator
    made for ``wf`` earlier that it no longer wants (a column no longer watched, a name of an
    older version). Triggers of one timing fire in name order: the state column's capture
    comes first. Raises DefinitionError if two of its triggers would share a name, or one
    would replace a trigger the orchestrator did not make for ``wf`` (another workflow's on
    the same table, the application's own)."""
    specs = _trigger_specs(wf)
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


TriggerSpec = tuple[str, str | None, str, list[str]]  # timing, changed column, function, args


def _trigger_specs(wf: Workflow) -> list[tuple[str, TriggerSpec]]:
    """Each trigger of ``wf`` by name suffix: timing, the column whose change fires it (None:
    on INSERT), the function and its arguments. The state column's captures also keep the
    row's deadline timers and record arrivals no handler serves as finished."""
    # The state column's captures: 'deadlines' or '', then the states whose arrival no
    # handler serves (recorded finished); none of either: the arguments capture_v2 took.
    unserved = wf.unserved_states()
    state_args = (["deadlines" if wf.deadlines else "", *unserved] if unserved
                  else ["deadlines"] if wf.deadlines else [])
    guard, capture = "orchestrator.guard_v2", "orchestrator.capture_v3"
    specs: list[tuple[str, TriggerSpec]] = [
        ("guard_insert", ("BEFORE", None, guard, [wf.name, wf.column])),
        ("guard_update", ("BEFORE", wf.column, guard, [wf.name, wf.column])),
        ("capture_insert", ("AFTER", None, capture, [wf.name, wf.key, wf.column, *state_args])),
    ]
    for rank, column in enumerate((wf.column, *wf.watch)):
        extra = state_args if column == wf.column else []
        specs.append((f"capture_{rank}_{column}",
                      ("AFTER", column, capture, [wf.name, wf.key, column, *extra])))
    return specs


def _trigger(wf: Workflow, suffix: str, timing: str, column: str | None, function: str,
             args: list[str]) -> sql.Composed:
    if column is None:
        event: sql.Composable = sql.SQL("INSERT")
        when: sql.Composable = sql.SQL("")
    else:
        col = sql.Identifier(column)
        event = sql.SQL("UPDATE OF {}").format(col)
        when = sql.SQL("WHEN (OLD.{c} IS DISTINCT FROM NEW.{c})").format(c=col)
    return sql.SQL(INSTALL["create_trigger"]).format(
        name=sql.Identifier(trigger_name(wf, suffix)), timing=sql.SQL(timing), event=event,
        table=sql.Identifier(wf.schema, wf.table), when=when,
        function=sql.Identifier(*function.split(".")),
        args=sql.SQL(", ").join(sql.Literal(a) for a in args))
