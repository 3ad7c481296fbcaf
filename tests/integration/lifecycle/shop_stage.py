"""The same shop with one state derived from its columns: shop.orders.stage, a column that
PostgreSQL generates from placed_at and the four booleans. Handlers route on the stage with
on/on_enter and write the booleans (the stage follows); payments and assignments are the
column-route workflows of shop_columns. Tables: shop.sql.
"""

from __future__ import annotations

from orchestrator import Context, Event, Next, Workflow
from tests.integration.lifecycle import shop_columns
from tests.integration.lifecycle.shop_columns import assignments, payments, step

__all__ = ["assignments", "order_stage", "payments"]

order_stage = Workflow(
    "order_stage", table="shop.orders", column="stage",
    states=["new", "validated", "rejected", "paid", "approved", "assigned"],
    initial="new", terminal=["rejected", "assigned"],
    transitions=[("validate", "new", "validated"), ("reject", "new", "rejected"),
                 ("pay", "validated", "paid"), ("approve", "paid", "approved"),
                 ("assign", "approved", "assigned")],
    watch=["placed_at"],
)

order_stage.on_column("placed_at", from_=None)(shop_columns.validate)


@order_stage.on("validated", "paid")
def approve(event: Event, ctx: Context) -> Next | None:
    return shop_columns.approve(event, ctx)


@order_stage.on_enter("approved")
def assign_driver(event: Event, ctx: Context) -> None:
    shop_columns.assign_driver(event, ctx)


@order_stage.on_enter("assigned")
def dispatch(event: Event, ctx: Context) -> Next:
    return shop_columns.dispatch(event, ctx)


@order_stage.on_enter("rejected")
def reject(event: Event, ctx: Context) -> Next:
    step(ctx, event, "reject")
    return Next(values={"note": "rejected: the order has no items"})
