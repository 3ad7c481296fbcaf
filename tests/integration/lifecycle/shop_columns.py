"""The shop's order lifecycle driven by column routes alone: no status column, no states.

An order is placed (placed_at set), validated (validated true or false), paid (a payment row
accepted sets paid), approved, and a driver assigned (an assignment row sets driver_assigned).
Some handlers return the values to write; others write rows themselves through ``ctx.db``, and
the next route fires from that write as from any other. Tables: shop.sql.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from orchestrator import Context, Event, Next, Workflow

# Orders above this amount wait for a person to approve them (UPDATE ... SET approved = true).
AUTO_APPROVE_UP_TO = Decimal("1000")

orders = Workflow("orders", table="shop.orders", column=None,
                  watch=["placed_at", "validated", "paid", "approved", "driver_assigned"])
payments = Workflow("payments", table="shop.payments", column=None, watch=["amount"])
assignments = Workflow("assignments", table="shop.assignments", column=None, watch=["driver"])


def step(ctx: Context, event: Event, name: str, order_id: Any = None) -> None:
    """Note what a handler did to an order, in its own transaction (see shop.steps)."""
    ctx.db.execute("INSERT INTO shop.steps (order_id, step, event_id) VALUES (%s, %s, %s)",
                   (order_id or event.key, name, event.id))


@orders.on_column("placed_at", from_=None)
def validate(event: Event, ctx: Context) -> Next:
    (total,) = ctx.db.execute("SELECT coalesce(sum(qty * price), 0) FROM shop.items"
                              " WHERE order_id = %s", (event.key,)).fetchone()
    step(ctx, event, "validate")
    return Next(values={"validated": total > 0, "total": total})


@orders.on_column("validated", to=False)
def reject(event: Event, ctx: Context) -> Next:
    step(ctx, event, "reject")
    return Next(values={"note": "rejected: the order has no items"})


@orders.on_column("paid", from_=[False, None], to=True)
def approve(event: Event, ctx: Context) -> Next | None:
    step(ctx, event, "approve")
    if Decimal(str(event.new_row["total"])) > AUTO_APPROVE_UP_TO:
        return None  # a person approves it
    return Next(values={"approved": True})


@orders.on_column("paid", from_=True)
def payment_reversed(event: Event, ctx: Context) -> Next:
    step(ctx, event, "payment_reversed")
    return Next(values={"note": "payment reversed"})


@orders.on_column("approved", to=True)
def assign_driver(event: Event, ctx: Context) -> None:
    (busy,) = ctx.db.execute("SELECT count(*) FROM shop.assignments").fetchone()
    drivers = [name for (name,) in ctx.db.execute("SELECT name FROM shop.drivers ORDER BY name")]
    ctx.db.execute("INSERT INTO shop.assignments (order_id, driver) VALUES (%s, %s)",
                   (event.key, drivers[busy % len(drivers)]))
    step(ctx, event, "assign_driver")


@orders.on_column("driver_assigned", to=True)
def dispatch(event: Event, ctx: Context) -> Next:
    (driver,) = ctx.db.execute("SELECT driver FROM shop.assignments WHERE order_id = %s",
                               (event.key,)).fetchone()
    step(ctx, event, "dispatch")
    return Next(values={"note": f"on its way with {driver}"})


@payments.on_column("amount", from_=None)
def check_payment(event: Event, ctx: Context) -> Next:
    """A new payment: accepted when it covers a validated order's total, which the order then
    shows as paid (written here, not returned)."""
    order_id = event.new_row["order_id"]
    covered = ctx.db.execute(
        "UPDATE shop.orders SET paid = true WHERE id = %s AND validated AND NOT paid"
        " AND total <= %s RETURNING id", (order_id, event.new_row["amount"])).fetchone()
    step(ctx, event, "check_payment", order_id)
    return Next(values={"accepted": covered is not None})


@assignments.on_column("driver", from_=None)
def confirm_assignment(event: Event, ctx: Context) -> None:
    order_id = event.new_row["order_id"]
    ctx.db.execute("UPDATE shop.orders SET driver_assigned = true WHERE id = %s", (order_id,))
    step(ctx, event, "confirm_assignment", order_id)
