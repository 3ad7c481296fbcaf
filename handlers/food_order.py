"""The food-order workflow: placed -> validated -> paid -> approved -> agent_assigned ->
picked_up -> delivered, or off to rejected, cancelled (by the customer, before pickup) or failed
(a handler ran out of attempts).

Each handler is one business step. Steps that touch other tables do it through ``ctx.db``, in
the transaction that also moves the order, so a retried or duplicated run changes nothing twice.
Chance (a flaky payment provider, a restaurant that declines) is a pure function of the order and
the attempt, so the same seed gives the same final states.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from orchestrator import Context, Deadline, Event, Next, Remote, Workflow

STATES = ["placed", "validated", "paid", "approved", "agent_assigned", "picked_up",
          "delivered", "rejected", "cancelled", "failed"]
ACTIVE = ["placed", "validated", "paid", "approved", "agent_assigned"]

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
        {"trigger": "cancel", "source": ACTIVE, "dest": "cancelled"},
    ],
    deadlines=[
        # An order nobody could validate within 15 minutes is rejected.
        Deadline("placed", after_s=15 * 60, to="rejected"),
        # An approved order no agent took within 30 minutes is cancelled (and refunded).
        Deadline("approved", after_s=30 * 60, to="cancelled"),
    ],
)


class ProviderUnavailable(Exception):
    """The simulated payment provider did not answer."""


def chance(order: dict[str, Any] | Any, *parts: Any) -> float:
    """A number in [0, 1) that depends only on the order's reference (less the ``~N`` a
    repeated seed adds) and ``parts``: reproducible randomness."""
    key = [str(order["ref"]).split("~")[0], *map(str, parts)]
    digest = hashlib.sha256(":".join(key).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@food_order.on_enter("placed")
def validate(event: Event, ctx: Context) -> Next:
    """The restaurant is open, every item is on its menu and available, the total adds up."""
    order = event.new_row
    open_, = ctx.db.execute("SELECT is_open FROM restaurants WHERE id = %s",
                            (order["restaurant_id"],)).fetchone()
    if not open_:
        return Next("rejected", {"reason": "restaurant closed"})
    ids = [item["menu_item_id"] for item in order["items"]]
    menu = dict(ctx.db.execute(
        "SELECT id, price_cents FROM menu_items WHERE restaurant_id = %s AND available"
        " AND id = ANY(%s)", (order["restaurant_id"], ids)).fetchall())
    if not ids or any(i not in menu for i in ids):
        return Next("rejected", {"reason": "item unavailable"})
    total = sum(item["qty"] * menu[item["menu_item_id"]] for item in order["items"])
    if total != order["total_cents"]:
        return Next("rejected", {"reason": f"total {order['total_cents']} != {total}"})
    return Next("validated")


@food_order.on("placed", "validated", max_attempts=4)
def charge(event: Event, ctx: Context) -> Next:
    """Charge the customer's card once, keyed by this event's idempotency key."""
    order = event.new_row
    existing = ctx.db.execute("SELECT provider_ref FROM payments WHERE idempotency_key = %s",
                              (event.idempotency_key,)).fetchone()
    if existing:  # charged by an earlier attempt whose outcome was lost: same charge
        return Next("paid", {"payment_ref": existing[0]})
    card, = ctx.db.execute("SELECT card FROM customers WHERE id = %s",
                           (order["customer_id"],)).fetchone()
    if card == "declined":
        return Next("rejected", {"reason": "card declined"})
    if card == "expired" or (card == "flaky" and event.attempt <= 2):
        raise ProviderUnavailable(f"payment provider did not answer for card {card!r}")
    if chance(order, "provider", event.attempt) < 0.08:
        raise ProviderUnavailable("payment provider timed out")
    provider_ref = f"ch_{hashlib.sha256(event.idempotency_key.encode()).hexdigest()[:16]}"
    ctx.db.execute(
        "INSERT INTO payments (order_id, amount_cents, idempotency_key, provider_ref)"
        " VALUES (%s, %s, %s, %s)",
        (order["id"], order["total_cents"], event.idempotency_key, provider_ref))
    return Next("paid", {"payment_ref": provider_ref})


@food_order.on("validated", "paid")
def approve(event: Event, ctx: Context) -> Next:
    """The restaurant accepts the order, or declines it and the payment is refunded."""
    order = event.new_row
    rate, = ctx.db.execute("SELECT accept_rate FROM restaurants WHERE id = %s",
                           (order["restaurant_id"],)).fetchone()
    if chance(order, "approve") < rate:
        return Next("approved")
    refund(ctx, order["id"])
    return Next("rejected", {"reason": "restaurant declined"})


@food_order.on("paid", "approved")
def assign_agent(event: Event, ctx: Context) -> Next | None:
    """Give the order to a free agent. With none free the order waits in `approved`: the next
    agent to finish a delivery takes the longest-waiting order (see ``free_agent``)."""
    match_agents(ctx)
    order = ctx.db.execute("SELECT status, agent_id FROM orders WHERE id = %s FOR UPDATE",
                           (int(event.key),)).fetchone()
    if order != ("approved", None):
        return None
    agent = ctx.db.execute(
        # SKIP LOCKED: two orders being assigned at once take different agents.
        "UPDATE agents SET active_order = %(order)s WHERE id = ("
        " SELECT id FROM agents WHERE active_order IS NULL ORDER BY deliveries, id"
        " LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id",
        {"order": int(event.key)}).fetchone()
    if agent is None:
        return None
    return Next("agent_assigned", {"agent_id": agent[0]})


def pick_up(event: Event) -> str:
    """The agent collects the order."""
    return "picked_up"


# The pick-up step as a serverless function (examples/remote_handler) when its address is set;
# the function and the dispatcher share ORCHESTRATOR_REMOTE_SECRETS.
PICK_UP_URL = os.environ.get("FOOD_ORDER_PICK_UP_URL")
food_order.on("approved", "agent_assigned")(Remote("pick_up", PICK_UP_URL) if PICK_UP_URL
                                            else pick_up)


@food_order.on("agent_assigned", "picked_up")
def deliver(event: Event, ctx: Context) -> str:
    free_agent(ctx, int(event.key), delivered=True)
    return "delivered"


@food_order.on_enter("cancelled")
def cancelled(event: Event, ctx: Context) -> None:
    """A cancelled order releases its agent and gets its money back."""
    free_agent(ctx, int(event.key))
    refund(ctx, int(event.key))


@food_order.on_enter("failed")
def failed(event: Event, ctx: Context) -> None:
    """An order that could not be completed releases its agent and is refunded."""
    free_agent(ctx, int(event.key))
    refund(ctx, int(event.key))


def refund(ctx: Context, order_id: int) -> None:
    ctx.db.execute("UPDATE payments SET refunded_at = now()"
                   " WHERE order_id = %s AND refunded_at IS NULL", (order_id,))


def match_agents(ctx: Context) -> None:
    """Take the agent-matching lock until this transaction ends, before any row lock.

    Matching free agents with waiting orders is decided by one transaction at a time: an order
    looking for an agent waits while an agent is being freed (and then sees it free), and an
    agent being freed waits while an order looks (and then sees it waiting). Without this, each
    could miss the other, leaving an order waiting while every agent is idle.
    """
    ctx.db.execute("SELECT pg_advisory_xact_lock(hashtext('food_order.agent_matching'))")


def free_agent(ctx: Context, order_id: int, *, delivered: bool = False) -> None:
    """Release the order's agent, who takes the longest-waiting approved order if there is
    one. Moving that order here, in this transaction, records its next event as usual."""
    match_agents(ctx)
    agent = ctx.db.execute(
        "UPDATE agents SET active_order = NULL, deliveries = deliveries + %s"
        " WHERE active_order = %s RETURNING id", (int(delivered), order_id)).fetchone()
    if agent is None:
        return
    waiting = ctx.db.execute(
        # SKIP LOCKED: two agents freed at once take different orders.
        "SELECT id FROM orders WHERE status = 'approved' AND agent_id IS NULL"
        " ORDER BY approved_at, id LIMIT 1 FOR UPDATE SKIP LOCKED").fetchone()
    if waiting is None:
        return
    ctx.db.execute("UPDATE agents SET active_order = %s WHERE id = %s", (waiting[0], agent[0]))
    ctx.db.execute("UPDATE orders SET status = 'agent_assigned', agent_id = %s WHERE id = %s",
                   (agent[0], waiting[0]))
