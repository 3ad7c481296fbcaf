"""The food-order workflow with misbehaving handlers, for the fault bench.

Same states, transitions and handlers as the demo's (``handlers/food_order.py``), each
wrapped so that, by a reproducible chance per order, step and attempt, it raises, hangs past
its timeout, returns garbage, or takes its whole process down. Rates come from FAULT_*
environment variables. With WITNESS_DSN set, every call is first recorded there, outside the
handler's transaction, and leaves an effect in it (``bench.witness.Executions``).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

import orchestrator.demo.handlers.food_order as demo
from bench.witness import Executions
from orchestrator import Workflow
from orchestrator.registry import HandlerSpec

RATES = {  # chance per handler call
    "raise": float(os.environ.get("FAULT_RAISE", "0.02")),
    "hang": float(os.environ.get("FAULT_HANG", "0.003")),
    "garbage": float(os.environ.get("FAULT_GARBAGE", "0.001")),
    "exit": float(os.environ.get("FAULT_EXIT", "0.0005")),
}
TIMEOUT_S = 2.0
EXECUTIONS = Executions()

food_order = Workflow.from_definition(demo.food_order.definition())


def misbehave(spec: HandlerSpec) -> Callable[..., Any]:
    @functools.wraps(spec.fn)
    def wrapped(event: Any, ctx: Any) -> Any:
        EXECUTIONS.record(event.id, spec.name, event.attempt, ctx.db)
        roll = demo.chance(event.new_row, "chaos", spec.name, event.attempt)
        edge = 0.0
        for kind, rate in RATES.items():
            edge += rate
            if roll < edge:
                act(kind)
                if kind == "garbage":
                    return {"chaos": "not an outcome"}
                break
        return spec.fn(event, ctx) if spec.takes_context else spec.fn(event)
    return wrapped


def act(kind: str) -> None:
    if kind == "raise":
        raise RuntimeError("chaos: handler raised")
    if kind == "hang":
        time.sleep(TIMEOUT_S + 1.5)  # then carries on: late, if the timeout did not catch it
    if kind == "exit":
        os._exit(70)  # the handler takes its process down


for _spec in demo.food_order.handlers:
    food_order.handlers.add(HandlerSpec(
        fn=misbehave(_spec), name=_spec.name, workflow=_spec.workflow, route=_spec.route,
        takes_context=True, max_attempts=_spec.max_attempts, timeout_s=TIMEOUT_S))
