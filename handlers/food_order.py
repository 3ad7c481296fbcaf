"""The food-order workflow: placed -> validated -> paid -> approved -> agent_assigned ->
picked_up -> delivered, or off to rejected, cancelled or failed."""

from __future__ import annotations

from orchestrator import Event, Next, Workflow

STATES = ["placed", "validated", "paid", "approved", "agent_assigned", "picked_up",
          "delivered", "rejected", "cancelled", "failed"]

food_order = Workflow(
    "food_order",
    table="public.orders",
    key="id",
    column="status",
    states=STATES,
    initial="placed",
    terminal=["delivered", "rejected", "cancelled", "failed"],
    failure_state="failed",
    transitions=[
        {"trigger": "validate", "source": "placed", "dest": "validated"},
        {"trigger": "pay", "source": "validated", "dest": "paid"},
        {"trigger": "approve", "source": "paid", "dest": "approved"},
        {"trigger": "assign", "source": "approved", "dest": "agent_assigned"},
        {"trigger": "pick_up", "source": "agent_assigned", "dest": "picked_up"},
        {"trigger": "deliver", "source": "picked_up", "dest": "delivered"},
        {"trigger": "reject", "source": ["placed", "validated", "paid"], "dest": "rejected"},
        {"trigger": "cancel", "source": ["placed", "validated", "paid", "approved",
                                         "agent_assigned"], "dest": "cancelled"},
    ],
)


@food_order.on_enter("placed")
def validate(event: Event) -> Next:
    """Items present and the total adds up."""
    order = event.new_row
    items = order["items"] or []
    total = sum(item["qty"] * item["price_cents"] for item in items)
    if not items:
        return Next("rejected", {"note": "no items"})
    if total != order["total_cents"]:
        return Next("rejected", {"note": f"total {order['total_cents']} != items {total}"})
    return Next("validated")


@food_order.on("placed", "validated")
def charge(event: Event) -> Next:
    """Charge the customer, keyed by the event so a retried charge is the same charge."""
    return Next("paid", {"payment_ref": f"pay_{event.idempotency_key}"})


@food_order.on("validated", "paid")
def approve(event: Event) -> str:
    return "approved"


@food_order.on("paid", "approved")
def assign_agent(event: Event) -> Next:
    return Next("agent_assigned", {"agent": f"agent-{int(event.key) % 7}"})


@food_order.on("approved", "agent_assigned")
def pick_up(event: Event) -> str:
    return "picked_up"


@food_order.on("agent_assigned", "picked_up")
def deliver(event: Event) -> str:
    return "delivered"
