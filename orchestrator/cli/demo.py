"""The food-order demo's commands: seed and demo."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.live import Live
from rich.table import Table

from orchestrator import demo as food_demo
from orchestrator.app import Orchestrator
from orchestrator.cli.common import (
    DataDir,
    Dsn,
    Json,
    app,
    err,
    friendly,
    out,
    print_json,
    settings_from,
)
from orchestrator.errors import OrchestratorError

Orders = Annotated[int, typer.Option(help="How many orders to place (seed: 0 only sets up).")]
Seed = Annotated[int, typer.Option(help="Random seed: the same seed gives the same orders.")]


@app.command()
@friendly
def seed(orders: Orders = 100, seed: Seed = 1, dsn: Dsn = None, data_dir: DataDir = None,
         json: Json = False) -> None:
    """Insert N new food orders (placed); first set up what the demo needs where missing: its
    tables, restaurants, customers and agents, the orchestrator schema and the demo's
    workflow."""
    with Orchestrator(settings_from(dsn=dsn, data_dir=data_dir), food_demo.registry()) as orch:
        food_demo.prepare(orch)
        first, last = food_demo.seed(orch, orders, seed)
    if json:
        print_json({"orders": orders, "first_id": first, "last_id": last})
    elif orders:
        out.print(f"placed {orders} orders (ids {first}..{last})")
    else:
        out.print("the demo's tables, reference data and workflow are in place; no order placed")


@app.command()
@friendly
def demo(
    orders: Orders = 200, seed: Seed = 1, dsn: Dsn = None, data_dir: DataDir = None,
    concurrency: Annotated[int, typer.Option(help="Handlers run at once.")] = 8,
    json: Json = False,
) -> None:
    """The one-command tour: set up the demo's tables, migrate, seed, run the food-order
    workflow to the end, summarize.

    With no DSN it uses the embedded PostgreSQL. It serves the demo's own handlers, whatever
    --handlers says. Exits 0 when every order reached a terminal state (delivered, rejected,
    cancelled or failed).
    """
    if orders < 1:
        raise OrchestratorError("--orders must be at least 1")
    settings = settings_from(dsn=dsn, data_dir=data_dir, concurrency=concurrency,
                             pool_size=concurrency + 2, retry_base_s=0.2, retry_max_s=2.0)
    # Retries and dead events are in the summary; per-event log lines would tear the live view.
    logging.getLogger("orchestrator").setLevel(max(logging.root.level, logging.ERROR))
    with Orchestrator(settings, food_demo.registry()) as orch:
        food_demo.setup(orch)  # the demo's tables, on which migrate installs the triggers
        orch.migrate()
        first, last = food_demo.seed(orch, orders, seed)
        if json:
            summary = food_demo.run(orch, first, last)
        else:
            err.print(f"placed {orders} orders (ids {first}..{last}) on {_where(orch)}; "
                      "dispatching...")
            states = orch.registry.workflow("food_order").states
            with Live(_board({}, states, orders), console=err, refresh_per_second=8) as live:
                summary = food_demo.run(
                    orch, first, last,
                    on_tick=lambda c: live.update(_board(c, states, orders)))
    if json:
        print_json(summary.as_dict())
    else:
        _print_summary(summary)
    if not summary.all_terminal:
        raise OrchestratorError("some orders did not reach a terminal state; see "
                                "`orchestrator status` and `orchestrator events --status dead`")


def _where(orch: Orchestrator) -> str:
    return "the embedded PostgreSQL" if not orch.settings.dsn else "the given database"


def _board(counts: dict[str, int], states: tuple[str, ...], total: int) -> Table:
    done = sum(counts.get(s, 0) for s in food_demo.TERMINAL)
    table = Table(title=f"orders: {done}/{total} finished", title_justify="left")
    for state in states:
        table.add_column(state.replace("_", " "), justify="right")
    table.add_row(*(str(counts.get(s, 0)) for s in states))
    return table


def _print_summary(s: food_demo.Summary) -> None:
    table = Table(title="food-order demo", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("orders", str(s.orders))
    for state in food_demo.TERMINAL:
        table.add_row(f"  {state}", str(s.final_states.get(state, 0)))
    unfinished = s.orders - sum(s.final_states.get(x, 0) for x in food_demo.TERMINAL)
    if unfinished:
        table.add_row("  not finished", str(unfinished))
    table.add_row("transitions applied", str(s.transitions))
    table.add_row("failed attempts (retried)", str(s.failed_attempts))
    table.add_row("dead events", str(s.dead_events))
    table.add_row("orders charged twice", str(s.double_charges))
    table.add_row("wall time", f"{s.wall_s:.2f} s")
    table.add_row("transitions per second", f"{s.transitions_per_s:.0f}")
    out.print(table)
