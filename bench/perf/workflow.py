"""The bench's workflows and their handlers, which do no work of their own.

``bench_order`` walks the food-order happy path (six transitions per order); its first handler
notes when it started, so the bench can measure the time from the commit that created an order
to its handler starting. ``bench_drain`` has one handler that returns nothing: a backlog of its
events measures claiming and finishing alone; ``bench_related`` is the same with related
data declared (a parent and children), read for every claimed batch. ``bench_remote``'s one
step is a Remote calling the stand-in function of the remote case (``BENCH_REMOTE_URL``, at
most ``BENCH_REMOTE_CONNECTIONS`` calls at once). The bench creates the tables itself
(``bench/perf/queries.sql``), so no migration of the project knows about them.
"""

from __future__ import annotations

import os
import time
from itertools import pairwise

from orchestrator import Event, Next, Related, Remote, Workflow

PATH = ["placed", "validated", "paid", "approved", "agent_assigned", "picked_up", "delivered"]
NEXT = dict(pairwise(PATH))
TRANSITIONS_PER_ORDER = len(PATH) - 1

bench_order = Workflow(
    "bench_order",
    table="public.bench_orders",
    states=PATH,
    initial="placed",
    terminal=["delivered"],
    transitions=[(f"to_{dest}", source, dest) for source, dest in NEXT.items()],
)

bench_drain = Workflow(
    "bench_drain",
    table="public.bench_drain",
    states=["queued", "drained"],
    initial="queued",
    terminal=["drained"],
    transitions=[("drain", "queued", "drained")],
)


@bench_order.on_enter("placed")
def validate(event: Event) -> Next:
    """The first step: records the wall-clock time it started (for the latency cases)."""
    return Next("validated", {"handler_started_s": time.time()})


def advance(event: Event) -> str:
    """Every later step: on to the next state, nothing else."""
    return NEXT[str(event.new_value)]


for _state in PATH[1:-1]:
    bench_order.on_enter(_state)(advance)


@bench_drain.on_enter("queued")
def drain(event: Event) -> None:
    """A backlog event: nothing to do, nothing to write."""


bench_remote = Workflow(
    "bench_remote",
    table="public.bench_remote",
    states=["queued", "called"],
    initial="queued",
    terminal=["called"],
    transitions=[("call", "queued", "called")],
)

# Always the same handler name (remote.bench_remote), whatever the URL: the definitions the
# bench installs and those its dispatchers check must agree.
bench_remote.on_enter("queued", timeout_s=30)(Remote(
    "bench_remote", os.environ.get("BENCH_REMOTE_URL", "http://127.0.0.1:9/call"),
    secrets=["bench"], max_concurrency=int(os.environ.get("BENCH_REMOTE_CONNECTIONS", "64"))))


# The backlog with related data: bench_drain's one step that does nothing, on rows whose
# workflow declares a parent (the order) and children (the rows of the same order), read for
# every claimed batch.
bench_related = Workflow(
    "bench_related",
    table="public.bench_related",
    states=["queued", "drained"],
    initial="queued",
    terminal=["drained"],
    transitions=[("drain", "queued", "drained")],
    related={"order": Related.parent("public.bench_orders", "order_id"),
             "siblings": Related.children("public.bench_related", "order_id", key="order_id")},
)
bench_related.on_enter("queued")(drain)
