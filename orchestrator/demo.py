"""The food-order demo: seed data, reproducible orders, and a run with a summary.

The reference data (restaurants, menus, customers, agents) lives in
``examples/food_order/seed.json``; orders are generated from a seed, so the same seed yields the
same orders and, through the handlers' reproducible chance, the same final states.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.app import Orchestrator
from orchestrator.dispatcher import Stats
from orchestrator.errors import OrchestratorError
from orchestrator.store import Store

SEED_FILE = Path(__file__).resolve().parents[1] / "examples" / "food_order" / "seed.json"
TERMINAL = ("delivered", "rejected", "cancelled", "failed")
REFERENCE_QUERIES = {"restaurants": "demo_restaurant", "menu_items": "demo_menu_item",
                     "customers": "demo_customer", "agents": "demo_agent"}


def reference_data(path: Path = SEED_FILE) -> dict[str, list[dict[str, Any]]]:
    try:
        data: dict[str, list[dict[str, Any]]] = json.loads(path.read_text())
    except OSError as exc:
        raise OrchestratorError(f"cannot read the demo's seed data: {exc}") from None
    return data


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


def load_reference(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Insert the restaurants, menus, customers and agents (rows already there are kept)."""
    data = reference_data()
    for table, query in REFERENCE_QUERIES.items():
        store.insert_many(query, data[table])
    return data


def seed(store: Store, count: int, seed_value: int) -> tuple[int, int]:
    """Insert the reference data (once) and ``count`` new orders; their first and last id."""
    if count < 1:
        raise OrchestratorError("--orders must be at least 1")
    data = load_reference(store)
    prefix = f"S{seed_value}-"
    taken = store.rows("demo_refs_taken", {"prefix": prefix + "%"})[0]["count"]
    orders = plan_orders(count, seed_value, data, prefix)
    if taken:  # the same seed again in this database: the same orders under fresh references
        orders = [o | {"ref": f"{o['ref']}~{taken}"} for o in orders]
    ids = store.insert_many("demo_order", orders)
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


def progress(store: Store, first: int, last: int) -> dict[str, int]:
    rows = store.rows("demo_progress", {"first": first, "last": last})
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
                on_tick(progress(orch.store, first, last))
            thread.join(timeout=0.25)
    except KeyboardInterrupt:
        dispatcher.stop()
        thread.join()
        raise
    wall = time.monotonic() - started
    if failure:
        raise failure[0]
    return summarize(orch.store, first, last, wall, result[0] if result else Stats())


def summarize(store: Store, first: int, last: int, wall_s: float, stats: Stats) -> Summary:
    states = progress(store, first, last)
    totals = store.rows("demo_totals", {"first": first, "last": last})[0]
    applied, failed_attempts, dead = totals["applied"], totals["failed_attempts"], totals["dead"]
    doubles = store.rows("demo_double_charges")[0]["count"]
    return Summary(orders=last - first + 1, final_states=states, transitions=applied,
                   failed_attempts=failed_attempts, dead_events=dead, double_charges=doubles,
                   wall_s=wall_s, dispatcher=stats.as_dict())
