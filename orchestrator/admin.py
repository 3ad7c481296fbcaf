"""What operators ask of a running system: counts, events, a row's history, redrives, manual
transitions and the state diagram. Plain data in, plain data out; the CLI formats it.

Everything here works from the workflow definitions installed in the database, so an operator
needs no handler code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from orchestrator.config import parse_duration
from orchestrator.errors import IllegalTransition, OrchestratorError, StoreError
from orchestrator.reports import Reports
from orchestrator.workflow import Workflow

EVENT_STATUSES = ("pending", "running", "done", "dead")


class UnknownRow(OrchestratorError):
    """No such row."""


def workflows(reports: Reports) -> dict[str, Workflow]:
    return {wf.name: wf for wf in reports.installed_workflows()}


def pick_workflow(reports: Reports, name: str | None) -> Workflow:
    """The named workflow, or the only one installed. Raises OrchestratorError otherwise."""
    known = workflows(reports)
    if name is None and len(known) == 1:
        return next(iter(known.values()))
    if name in known:
        return known[name]
    choices = ", ".join(sorted(known)) or "none installed"
    what = f"unknown workflow {name!r}" if name else "several workflows: pick one with --workflow"
    raise OrchestratorError(f"{what} (installed: {choices})")


def status(reports: Reports) -> dict[str, Any]:
    """Rows per state and open/dead events per workflow; the shape `status --json` prints."""
    counts = {row["workflow"]: row for row in reports.event_counts()}
    out = []
    for wf in workflows(reports).values():
        states = reports.state_counts(wf)
        ev = counts.get(wf.name, {})
        out.append({
            "name": wf.name, "table": wf.qualified_table,
            "states": {s: states.get(s, 0) for s in wf.states},
            "events": {"pending": ev.get("pending", 0), "running": ev.get("running", 0),
                       "dead": ev.get("dead", 0),
                       "oldest_pending_age_s": ev.get("oldest_pending_age_s")},
        })
    return {"workflows": out, "limits": limits(reports)}


def limits(reports: Reports) -> list[dict[str, Any]]:
    """Each fleet-wide limit: ``name``, ``max_running``, ``per_s`` (None: no bound of that
    kind), ``running`` (runs holding one of its slots now) and ``waits`` (times an event was
    put back to wait its turn, by every dispatcher, since it was installed)."""
    return [{k: r[k] for k in ("name", "max_running", "per_s", "running", "waits")}
            for r in reports.limits()]


BACKLOG_FIELDS = ("due", "waiting", "timers", "running", "dead", "oldest_due_age_s")


def backlog(reports: Reports) -> dict[str, dict[str, Any]]:
    """Per workflow with open or dead events: ``due`` (runnable, not taken), ``waiting`` (for
    a retry), ``timers`` (deadlines to come), ``running``, ``dead``, ``oldest_due_age_s``
    (seconds the oldest due event has waited since it became runnable; None when none is due)
    and ``min_open_id``. A workflow with none of these is absent."""
    return {r["workflow"]: {k: r[k] for k in (*BACKLOG_FIELDS, "min_open_id")}
            for r in reports.event_backlog()}


def events(reports: Reports, *, status: str | None = None, workflow: str | None = None,
           row: str | None = None, search: str | None = None,
           limit: int = 50) -> list[dict[str, Any]]:
    """Events, newest first, filtered by status, workflow, row key and a text to find in the
    handler's name or the last error."""
    if status is not None and status not in EVENT_STATUSES:
        raise OrchestratorError(f"unknown event status {status!r} "
                                f"(one of {', '.join(EVENT_STATUSES)})")
    if limit < 1:
        raise OrchestratorError("--limit must be at least 1")
    rows = reports.list_events(status=status, workflow=workflow, row_key=row,
                               search=search or None, limit=limit)
    return [_plain(r) for r in rows]


def history(reports: Reports, wf: Workflow, key: str) -> dict[str, Any]:
    """One row's timeline: every event with its failed attempts. UnknownRow if no such row."""
    current = _row_state(reports, wf, key)
    errors: dict[int, list[dict[str, Any]]] = {}
    for err in reports.row_errors(wf.name, key):
        errors.setdefault(err["event_id"], []).append(
            {"attempt": err["attempt"], "error": err["error"], "at": _iso(err["at"])})
    timeline = [_plain(e) | {"errors": errors.get(e["id"], [])}
                for e in reports.row_history(wf.name, key)]
    return {"workflow": wf.name, "key": key, "state": current, "events": timeline,
            "pruned_before": _pruned_before(reports, timeline)}


def _pruned_before(reports: Reports, timeline: Sequence[Mapping[str, Any]]) -> str | None:
    """When a row's older history may have been pruned: the time before which finished events
    are gone (ISO 8601), if its first kept event is not its insert; else None."""
    if timeline and timeline[0]["op"] == "INSERT":
        return None
    before = reports.pruned()
    return None if before is None else before.isoformat()


def pruned_note(before: str | None) -> str | None:
    """The plain words for a history cut short by retention, or None."""
    if before is None:
        return None
    return (f"older history pruned: events finished before {before[:19].replace('T', ' ')} "
            "(UTC) are no longer kept")


def prune(reports: Reports, *, older_than: str, dry_run: bool = False) -> dict[str, Any]:
    """Remove finished events older than ``older_than`` (a duration, ``3d``), whole partitions
    of history at a time; the shape `prune --json` prints. Raises ConfigError for a bad
    duration."""
    pruned = reports.prune(parse_duration(older_than), dry_run=dry_run)
    return {"dry_run": dry_run, "dead": False, "events": pruned.events,
            "partitions": pruned.partitions,
            "finished_before": None if pruned.before is None else pruned.before.isoformat()}


def prune_dead(reports: Reports, *, older_than: str | None, workflow: str | None,
               handler: str | None, dry_run: bool = False) -> dict[str, Any]:
    """Remove dead events (all, or those that died more than ``older_than`` ago), with their
    errors; the shape `prune --dead --json` prints."""
    age = parse_duration(older_than) if older_than else timedelta(0)
    count = reports.prune_dead(age, workflow=workflow, handler=handler, dry_run=dry_run)
    return {"dry_run": dry_run, "dead": True, "events": count}


def redrive(reports: Reports, *, ids: Sequence[int] = (), all_dead: bool = False,
            handler: str | None = None, workflow: str | None = None,
            dry_run: bool = False) -> list[dict[str, Any]]:
    """Requeue dead events: the given ids (every one must be dead, else nothing is done), or
    with ``all_dead`` every dead event matching the filters."""
    if ids:
        found = reports.event_statuses(ids)
        problems = [f"{i} ({found[i]})" if i in found else f"{i} (no such event)"
                    for i in ids if found.get(i) != "dead"]
        if problems:
            raise OrchestratorError(f"not dead, nothing redriven: event {', '.join(problems)}")
    elif not all_dead:
        raise OrchestratorError("name event ids, or use --dead to redrive dead events")
    chosen = reports.redrive(workflows(reports), ids=ids, all_dead=all_dead, handler=handler,
                           workflow=workflow, dry_run=dry_run)
    return [{"id": r["id"], "workflow": r["workflow"], "key": r["row_key"],
             "handler": r["handler"], "error": r["last_error"]} for r in chosen]


def fire(reports: Reports, wf: Workflow, key: str, target: str) -> dict[str, str]:
    """Move a row by hand to a state (or by a trigger name such as ``cancel``), checked
    against the workflow. Raises UnknownRow, IllegalTransition or OrchestratorError."""
    current = _row_state(reports, wf, key)
    dest = target if target in wf.states else wf.trigger_target(current, target)
    if dest is None:
        if not any(t.trigger == target for t in wf.transitions):
            raise OrchestratorError(f"{target!r} is neither a state nor a trigger of "
                                    f"workflow {wf.name!r}")
        raise IllegalTransition(wf.name, current, target)
    wf.check(current, dest)
    if not reports.move(wf, key, current, dest):
        raise OrchestratorError(f"{wf.name} {key} changed while firing; look again and retry")
    return {"workflow": wf.name, "key": key, "from": current, "to": dest}


def graph(wf: Workflow, *, fmt: str = "mermaid",
          counts: Mapping[str, int] | None = None) -> str:
    """The state diagram as Mermaid or Graphviz dot text, optionally with rows per state.
    Raises OrchestratorError for a workflow without a state column."""
    def label(state: str) -> str:
        return f"{state} ({counts.get(state, 0)})" if counts is not None else state

    if wf.column is None:
        raise OrchestratorError(f"workflow {wf.name!r} has no states to draw: its handlers "
                                "route on its columns' changes")

    if fmt == "mermaid":
        lines = ["stateDiagram-v2", f"    [*] --> {wf.initial}"]
        lines += [f'    {s} : {label(s)}' for s in wf.states]
        lines += [f"    {t.source} --> {t.dest} : {t.trigger}" for t in wf.transitions]
        lines += [f"    {s} --> [*]" for s in wf.states if s in wf.terminal]
        return "\n".join(lines)
    if fmt == "dot":
        lines = [f'digraph "{wf.name}" {{', "    rankdir=LR;",
                 '    "__start" [shape=point];', f'    "__start" -> "{wf.initial}";']
        for s in wf.states:
            shape = "doublecircle" if s in wf.terminal else "circle"
            lines.append(f'    "{s}" [shape={shape}, label="{label(s)}"];')
        lines += [f'    "{t.source}" -> "{t.dest}" [label="{t.trigger}"];'
                  for t in wf.transitions]
        return "\n".join([*lines, "}"])
    raise OrchestratorError(f"unknown graph format {fmt!r} (mermaid or dot)")


def _row_state(reports: Reports, wf: Workflow, key: str) -> str:
    try:
        state = reports.row_state(wf, key)
    except StoreError as exc:
        raise UnknownRow(f"{wf.name} has no row {key!r} ({exc})") from None
    if state is None:
        raise UnknownRow(f"{wf.name} has no row {key!r} in {wf.qualified_table}")
    return state


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _iso(v) for k, v in row.items()}


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value
