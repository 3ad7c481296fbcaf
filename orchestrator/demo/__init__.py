"""The food-order demo: an application of the orchestrator like any user's.

It sets up its own tables (``examples/food_order/schema.sql``, idempotent) in the database it is
pointed at, loads its reference data (restaurants, menus, customers, agents from
``seed.json``), places reproducible orders and runs them to the end with a summary. Orders are
generated from a seed, so the same seed yields the same orders and, through the handlers'
reproducible chance, the same final states. Those files ship in the package as
``orchestrator.demo.files``, the handlers as ``orchestrator.demo.handlers``. Like any
application it talks to its own tables with psycopg, on the orchestrator's pool.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from orchestrator.app import Orchestrator
from orchestrator.db import borrowed, translated
from orchestrator.dispatcher import Stats
from orchestrator.errors import DefinitionError, NotMigrated, OrchestratorError
from orchestrator.registry import Registry, load_registry
from orchestrator.sql import load_queries

FILES = resources.files("orchestrator.demo.files")
QUERIES = load_queries("orchestrator.demo.files")
HANDLERS = "orchestrator.demo.handlers"
TERMINAL = ("delivered", "rejected", "cancelled", "failed")
REFERENCE_QUERIES = {"restaurants": "demo_restaurant", "menu_items": "demo_menu_item",
                     "customers": "demo_customer", "agents": "demo_agent"}


def registry() -> Registry:
    """The demo's workflow and handlers."""
    return load_registry(HANDLERS)


def reference_data() -> dict[str, list[dict[str, Any]]]:
    try:
        data: dict[str, list[dict[str, Any]]] = json.loads(
            FILES.joinpath("seed.json").read_text(encoding="utf-8"))
    except OSError as exc:
        raise OrchestratorError(f"cannot read the demo's seed data: {exc}") from None
    return data


@contextmanager
def _connection(orch: Orchestrator) -> Iterator[psycopg.Connection[Any]]:
    """One transaction on the orchestrator's pool, driver errors as StoreError."""
    with borrowed(orch.pool) as conn, translated(conn), conn.transaction():
        yield conn


def setup(orch: Orchestrator) -> None:
    """Create the demo's tables where they are missing, and grant the dispatchers' role what
    the handlers need (idempotent; concurrent setups take turns)."""
    schema = FILES.joinpath("schema.sql").read_text(encoding="utf-8")
    with _connection(orch) as conn:
        conn.execute(QUERIES["setup_lock"])
        conn.execute(schema)


def prepare(orch: Orchestrator) -> None:
    """Everything the demo needs in ``orch``'s database: its tables first, then the
    orchestrator schema and the demo's workflow (whose triggers go on those tables) unless
    they are installed already. An installed workflow is left as it is, even with other
    handlers (a remote one, say): `orchestrator migrate` decides those."""
    setup(orch)
    try:
        orch.store.verify_workflows(list(orch.registry.workflows.values()))
    except NotMigrated:
        orch.migrate()
    except DefinitionError:
        pass


def _rows(orch: Orchestrator, name: str, params: Mapping[str, Any] | None = None
          ) -> list[dict[str, Any]]:
    with _connection(orch) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(QUERIES[name], params or {})
        return cur.fetchall()


def _insert(orch: Orchestrator, name: str, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Run the named INSERT once per row in one transaction; what each RETURNING gave."""
    with _connection(orch) as conn, conn.cursor() as cur:
        cur.executemany(QUERIES[name], [
            {k: Jsonb(v) if isinstance(v, dict | list) else v for k, v in row.items()}
            for row in rows], returning=True)
        out: list[Any] = []
        while True:
            out.append(row[0] if cur.description and (row := cur.fetchone()) else None)
            if not cur.nextset():
                return out


def plan_orders(count: int, seed: int, data: dict[str, list[dict[str, Any]]],
                prefix: str) -> list[dict[str, Any]]:
    """``count`` orders drawn from ``data`` with ``random.Random(seed)``: a pure function.

    Mostly open restaurants and available dishes; now and then a closed restaurant, a dish off
    the menu or a stale price, which validation rejects.
    """
    rng = random.Random(seed)
    menus: dict[int, list[dict[str, Any]]] = {}
    for item in data["menu_items"]:
        menus.setdefault(item["restaurant_id"], []).append(item)
    restaurants = data["restaurants"]
    weights = [10 if r["is_open"] else 0.3 for r in restaurants]
    orders = []
    for n in range(1, count + 1):
        restaurant = rng.choices(restaurants, weights)[0]
        menu = menus[restaurant["id"]]
        size = min(len(menu), rng.choices([1, 2, 3, 4], [3, 4, 2, 1])[0])
        dishes = rng.sample(menu, size, counts=[20 if m["available"] else 1 for m in menu])
        dishes = list({d["id"]: d for d in dishes}.values())
        items = [{"menu_item_id": d["id"], "name": d["name"], "qty": rng.choice([1, 1, 1, 2, 3]),
                  "price_cents": d["price_cents"]} for d in dishes]
        total = sum(i["qty"] * i["price_cents"] for i in items)
        if rng.random() < 0.02:
            total += rng.choice([-100, 50, 100])  # the app showed an old price
        customer = rng.choice(data["customers"])
        orders.append({"ref": f"{prefix}{n:05d}", "customer_id": customer["id"],
                       "restaurant_id": restaurant["id"], "items": items, "total_cents": total})
    return orders


def load_reference(orch: Orchestrator) -> dict[str, list[dict[str, Any]]]:
    """Insert the restaurants, menus, customers and agents into the demo's tables (made by
    ``setup``); rows already there are kept."""
    data = reference_data()
    for table, query in REFERENCE_QUERIES.items():
        _insert(orch, query, data[table])
    return data


def seed(orch: Orchestrator, count: int, seed_value: int) -> tuple[int, int]:
    """Insert the reference data (once) and ``count`` new orders into the demo's tables (made
    by ``setup``); their first and last id."""
    if count < 0:
        raise OrchestratorError("--orders must be at least 0")
    data = load_reference(orch)
    prefix = f"S{seed_value}-"
    taken = _rows(orch, "demo_refs_taken", {"prefix": prefix + "%"})[0]["count"]
    orders = plan_orders(count, seed_value, data, prefix)
    if taken:  # the same seed again in this database: the same orders under fresh references
        orders = [o | {"ref": f"{o['ref']}~{taken}"} for o in orders]
    ids = _insert(orch, "demo_order", orders) if orders else [0]
    return min(ids), max(ids)


@dataclass
class Summary:
    """What a demo run came to; the shape `demo --json` prints."""

    orders: int
    final_states: dict[str, int]
    transitions: int
    failed_attempts: int
    dead_events: int
    double_charges: int
    wall_s: float
    dispatcher: dict[str, int] = field(default_factory=dict)

    @property
    def transitions_per_s(self) -> float:
        return self.transitions / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def all_terminal(self) -> bool:
        return sum(self.final_states.get(s, 0) for s in TERMINAL) == self.orders

    def as_dict(self) -> dict[str, Any]:
        return {"orders": self.orders, "final_states": self.final_states,
                "transitions": self.transitions, "failed_attempts": self.failed_attempts,
                "dead_events": self.dead_events, "double_charges": self.double_charges,
                "wall_s": round(self.wall_s, 3),
                "transitions_per_s": round(self.transitions_per_s, 1),
                "all_terminal": self.all_terminal, "dispatcher": self.dispatcher}


def progress(orch: Orchestrator, first: int, last: int) -> dict[str, int]:
    """How many of the orders ``first``..``last`` are in each state."""
    rows = _rows(orch, "demo_progress", {"first": first, "last": last})
    return {r["status"]: r["count"] for r in rows}


def run(orch: Orchestrator, first: int, last: int,
        on_tick: Callable[[dict[str, int]], None] | None = None) -> Summary:
    """Dispatch until no event is open, calling ``on_tick`` with state counts meanwhile."""
    dispatcher = orch.dispatcher(until_idle=True)
    result: list[Stats] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(dispatcher.run())
        except BaseException as exc:
            failure.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=work, name="orchestrator-demo")
    thread.start()
    try:
        while thread.is_alive():
            if on_tick:
                on_tick(progress(orch, first, last))
            thread.join(timeout=0.25)
    except KeyboardInterrupt:
        dispatcher.stop()
        thread.join()
        raise
    wall = time.monotonic() - started
    if failure:
        raise failure[0]
    return summarize(orch, first, last, wall, result[0] if result else Stats())


def summarize(orch: Orchestrator, first: int, last: int, wall_s: float,
              stats: Stats) -> Summary:
    states = progress(orch, first, last)
    totals = _rows(orch, "demo_totals", {"first": first, "last": last})[0]
    applied, failed_attempts, dead = totals["applied"], totals["failed_attempts"], totals["dead"]
    doubles = _rows(orch, "demo_double_charges")[0]["count"]
    return Summary(orders=last - first + 1, final_states=states, transitions=applied,
                   failed_attempts=failed_attempts, dead_events=dead, double_charges=doubles,
                   wall_s=wall_s, dispatcher=stats.as_dict())
