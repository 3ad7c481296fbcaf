"""Operator commands: status, events, history, retry, prune, fire, graph.

They read the workflow definitions installed in the database, so they need no handler code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from orchestrator import admin
from orchestrator.app import Orchestrator
from orchestrator.cli.common import (
    DataDir,
    Dsn,
    Json,
    Workflow,
    app,
    friendly,
    out,
    print_json,
    settings_from,
)
from orchestrator.logs import printable


@contextmanager
def opened(dsn: str | None, data_dir: Any) -> Iterator[Orchestrator]:
    with Orchestrator(settings_from(dsn=dsn, data_dir=data_dir, pool_size=1)) as orch:
        yield orch


@app.command()
@friendly
def status(dsn: Dsn = None, data_dir: DataDir = None, json: Json = False) -> None:
    """Rows per state for each workflow; pending, running and dead events; oldest pending age."""
    with opened(dsn, data_dir) as orch:
        report = admin.status(orch.reports)
    if json:
        print_json(report)
        return
    for wf in report["workflows"]:
        table = Table(title=shown(f"{wf['name']} ({wf['table']})"), title_justify="left")
        table.add_column("state")
        table.add_column("rows", justify="right")
        for state, count in wf["states"].items():
            table.add_row(shown(state), str(count))
        out.print(table)
        ev = wf["events"]
        age = ev["oldest_pending_age_s"]
        out.print(f"events: {ev['pending']} pending, {ev['running']} running, {ev['dead']} dead"
                  + (f"; oldest pending {age:.1f}s" if age is not None else ""))
    for lim in report["limits"]:
        bounds = [f"{lim['running']} of {lim['max_running']} at once"
                  if lim["max_running"] else f"{lim['running']} running",
                  *([f"{lim['per_s']:g}/s"] if lim["per_s"] else [])]
        out.print(f"limit {shown(lim['name'])}: {', '.join(bounds)}; "
                  f"{lim['waits']} waits for a turn")


@app.command()
@friendly
def events(
    dsn: Dsn = None, data_dir: DataDir = None, json: Json = False,
    status: Annotated[str | None, typer.Option(
        help="pending, running, done or dead.", show_default=False)] = None,
    order: Annotated[str | None, typer.Option(
        help="Only this row (an order id).", show_default=False)] = None,
    workflow: Workflow = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
) -> None:
    """List events, newest first."""
    with opened(dsn, data_dir) as orch:
        rows = admin.events(orch.reports, status=status, workflow=workflow, row=order, limit=limit)
        pruned = orch.reports.pruned()
    if json:
        print_json(rows)
        return
    table = Table()
    for col in ("id", "workflow", "row", "change", "status", "outcome", "attempts", "error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*map(shown, (r["id"], r["workflow"], r["row_key"], _change(r),
                                   r["status"], r["outcome"], r["attempts"], r["last_error"])))
    out.print(table)
    if (note := admin.pruned_note(None if pruned is None else pruned.isoformat())) is not None:
        out.print(note, markup=False)


@app.command()
@friendly
def history(
    order_id: Annotated[str, typer.Argument(help="The row's key (an order id).")],
    dsn: Dsn = None, data_dir: DataDir = None, json: Json = False, workflow: Workflow = None,
) -> None:
    """The timeline of one row: each change, its handler, attempts, errors and times."""
    with opened(dsn, data_dir) as orch:
        report = admin.history(orch.reports, admin.pick_workflow(orch.reports, workflow), order_id)
    if json:
        print_json(report)
        return
    out.print(f"{escape(plain(report['workflow']))} {escape(plain(report['key']))}: "
              f"now [bold]{escape(plain(report['state']))}[/bold]", soft_wrap=True)
    if (note := admin.pruned_note(report["pruned_before"])) is not None:
        out.print(note, markup=False)
    table = Table()
    for col in ("event", "change", "handler", "status", "outcome", "attempts", "created",
                "finished", "errors"):
        table.add_column(col, overflow="fold")
    for e in report["events"]:
        errors = "; ".join(f"#{x['attempt']}: {x['error']}" for x in e["errors"])
        table.add_row(*map(shown, (e["id"], _change(e), (e["handler"] or "").rsplit(".", 1)[-1],
                                   e["status"], e["outcome"], e["attempts"],
                                   _time(e["created_at"]), _time(e["finished_at"]), errors)))
    out.print(table)


@app.command()
@friendly
def retry(
    event_ids: Annotated[list[int] | None, typer.Argument(
        help="Dead events to run again.", show_default=False)] = None,
    dead: Annotated[bool, typer.Option("--dead", help="Every dead event (with filters).")] = False,
    handler: Annotated[str | None, typer.Option(
        help="Only dead events of this handler (full or last dotted name).",
        show_default=False)] = None,
    workflow: Workflow = None,
    dry_run: Annotated[bool, typer.Option(help="Show what would be redriven.")] = False,
    dsn: Dsn = None, data_dir: DataDir = None, json: Json = False,
) -> None:
    """Redrive dead events: they go back to the queue with fresh attempts, and a row their
    death moved to the failure state returns to the state the event saw (a move outside the
    workflow, for members of orchestrator_admin only)."""
    with opened(dsn, data_dir) as orch:
        chosen = admin.redrive(orch.reports, ids=event_ids or (), all_dead=dead, handler=handler,
                               workflow=workflow, dry_run=dry_run)
    if json:
        print_json({"dry_run": dry_run, "events": chosen})
        return
    verb = "would redrive" if dry_run else "redriven"
    out.print(f"{verb}: {len(chosen)} event(s)")
    for e in chosen:
        out.print(plain(f"  {e['id']}  {e['workflow']} {e['key']}  {e['error'] or ''}"),
                  soft_wrap=True, markup=False)


@app.command()
@friendly
def prune(
    older_than: Annotated[str | None, typer.Option(
        help="Remove finished events older than this (a duration: 3d, 12h, 90m), whole hours "
             "at a time; with --dead, dead events that died longer ago than this.",
        show_default=False)] = None,
    dead: Annotated[bool, typer.Option(
        "--dead", help="Remove dead events instead (they are never pruned otherwise).")] = False,
    handler: Annotated[str | None, typer.Option(
        help="With --dead: only dead events of this handler (full or last dotted name).",
        show_default=False)] = None,
    workflow: Workflow = None,
    dry_run: Annotated[bool, typer.Option(help="Count what would be removed.")] = False,
    dsn: Dsn = None, data_dir: DataDir = None, json: Json = False,
) -> None:
    """Remove old history by hand: finished events older than --older-than (what dispatchers
    do themselves with --retention), or dead events with --dead."""
    if not dead and older_than is None:
        raise typer.BadParameter("give --older-than (or --dead)", param_hint="--older-than")
    with opened(dsn, data_dir) as orch:
        if dead:
            report = admin.prune_dead(orch.reports, older_than=older_than, workflow=workflow,
                                      handler=handler, dry_run=dry_run)
        else:
            report = admin.prune(orch.reports, older_than=str(older_than), dry_run=dry_run)
    if json:
        print_json(report)
        return
    verb = "would remove" if dry_run else "removed"
    what = "dead events" if dead else "finished events"
    before = report.get("finished_before")
    where = "" if dead or before is None else (
        f" ({report['partitions']} partitions of history; none finished before "
        f"{before[:19].replace('T', ' ')} UTC is left)")
    out.print(f"{verb}: {report['events']} {what}{where}", markup=False)


@app.command()
@friendly
def fire(
    order_id: Annotated[str, typer.Argument(help="The row's key (an order id).")],
    target: Annotated[str, typer.Argument(help="A state, or a trigger such as `cancel`.")],
    dsn: Dsn = None, data_dir: DataDir = None, json: Json = False, workflow: Workflow = None,
) -> None:
    """Request a transition by hand (e.g. cancel an order), checked against the workflow."""
    with opened(dsn, data_dir) as orch:
        moved = admin.fire(orch.reports, admin.pick_workflow(orch.reports, workflow), order_id,
                           target)
    if json:
        print_json(moved)
        return
    out.print(plain(f"{moved['workflow']} {moved['key']}: {moved['from']} -> {moved['to']}"),
              soft_wrap=True, markup=False)


@app.command()
@friendly
def graph(
    fmt: Annotated[str, typer.Option("--format", help="mermaid or dot.")] = "mermaid",
    counts: Annotated[bool, typer.Option("--counts", help="Label states with live row counts.")]
        = False,
    dsn: Dsn = None, data_dir: DataDir = None, workflow: Workflow = None,
) -> None:
    """The state diagram from the workflow definition, as Mermaid or Graphviz dot text."""
    with opened(dsn, data_dir) as orch:
        wf = admin.pick_workflow(orch.reports, workflow)
        live = orch.reports.state_counts(wf) if counts else None
    out.print(admin.graph(wf, fmt=fmt, counts=live), soft_wrap=True, markup=False)


def plain(value: Any) -> str:
    """Text from the database as it reads on one line: no markup, control characters written
    out (``logs.printable``); None is empty."""
    return "" if value is None else printable(str(value))


def shown(value: Any) -> Text:
    """A table cell or title holding text from the database: ``plain`` and never read as rich
    markup (a ``[/]`` in an error would end a style, ``[link=...]`` make a link)."""
    return Text(plain(value))


def _change(e: dict[str, Any]) -> str:
    old = e["old_value"] if e["old_value"] is not None else "∅"
    deadline = "deadline " if e["op"] == "TIMER" else ""
    return f"{deadline}{e['column_name']}: {old} → {e['new_value']}"


def _time(value: str | None) -> str:
    return value[11:23] if value else ""
