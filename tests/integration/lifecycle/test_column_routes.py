"""The shop driven end to end by column routes with value conditions, from plain SQL inserts:
no status column, some handlers returning values and some writing rows through ctx.db."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from orchestrator.testing import Harness
from tests.support.processes import wait_for


def place_order(orchestrator: Harness, *prices: str, customer: str = "ann") -> int:
    """An order with one item per price, placed in one transaction as an application would."""
    rows = orchestrator.sql(
        "WITH o AS (INSERT INTO shop.orders (customer, placed_at) VALUES (%s, now())"
        " RETURNING id), i AS (INSERT INTO shop.items (order_id, sku, qty, price)"
        " SELECT o.id, 'sku-' || n, 1, p::numeric FROM o, unnest(%s::text[])"
        " WITH ORDINALITY AS u (p, n)) SELECT id FROM o", (customer, list(prices)))
    return int(rows[0][0])


def pay(orchestrator: Harness, order_id: int, amount: str) -> None:
    orchestrator.sql("INSERT INTO shop.payments (order_id, amount) VALUES (%s, %s)",
                     (order_id, amount))


def order(orchestrator: Harness, order_id: int) -> dict[str, Any]:
    (row,) = orchestrator.sql(
        "SELECT validated, paid, approved, driver_assigned, note FROM shop.orders"
        " WHERE id = %s", (order_id,))
    return dict(zip(["validated", "paid", "approved", "driver_assigned", "note"], row,
                    strict=True))


def steps(orchestrator: Harness, order_id: int) -> list[str]:
    return [s for (s,) in orchestrator.sql(
        "SELECT step FROM shop.steps WHERE order_id = %s ORDER BY seq", (order_id,))]


def event_count(orchestrator: Harness) -> int:
    return int(orchestrator.sql("SELECT count(*) FROM orchestrator.event_log")[0][0])


def test_an_order_goes_from_placed_to_dispatched_by_column_routes_alone(
        orchestrator: Harness) -> None:
    key = place_order(orchestrator, "12.50", "7.50")
    orchestrator.run_until_idle()
    assert order(orchestrator, key) | {"note": None} == {
        "validated": True, "paid": False, "approved": False, "driver_assigned": False,
        "note": None}

    pay(orchestrator, key, "20.00")
    orchestrator.run_until_idle()

    assert order(orchestrator, key) == {"validated": True, "paid": True, "approved": True,
                                        "driver_assigned": True, "note": "on its way with dee"}
    assert steps(orchestrator, key) == ["validate", "check_payment", "approve", "assign_driver",
                                        "confirm_assignment", "dispatch"]
    assert orchestrator.handlers_run("orders", key) == ["validate", "approve", "assign_driver",
                                                        "dispatch"]
    assert orchestrator.sql("SELECT accepted FROM shop.payments") == [(True,)]
    assert orchestrator.dead_events() == []


def test_an_order_without_items_is_rejected_and_its_payment_refused(
        orchestrator: Harness) -> None:
    key = place_order(orchestrator)
    orchestrator.run_until_idle()
    pay(orchestrator, key, "5.00")
    orchestrator.run_until_idle()
    assert order(orchestrator, key) == {"validated": False, "paid": False, "approved": False,
                                        "driver_assigned": False,
                                        "note": "rejected: the order has no items"}
    assert steps(orchestrator, key) == ["validate", "reject", "check_payment"]
    assert orchestrator.sql("SELECT accepted FROM shop.payments") == [(False,)]


def test_a_change_no_route_serves_records_no_event(orchestrator: Harness) -> None:
    key = place_order(orchestrator, "2000.00")
    orchestrator.run_until_idle()
    pay(orchestrator, key, "2000.00")
    orchestrator.run_until_idle()
    assert order(orchestrator, key)["approved"] is False  # above the automatic limit
    before = event_count(orchestrator)

    # approved true -> false, validated to NULL, a column nobody watches: no route serves them.
    orchestrator.sql("UPDATE shop.orders SET approved = true WHERE id = %s", (key,))
    orchestrator.run_until_idle()
    assert event_count(orchestrator) == before + 3  # approved, the assignment, driver_assigned
    orchestrator.sql("UPDATE shop.orders SET approved = false, validated = NULL,"
                     " note = 'changed by hand' WHERE id = %s", (key,))

    assert event_count(orchestrator) == before + 3
    assert orchestrator.open_events() == []


def test_a_route_on_leaving_a_value_serves_that_change_alone(orchestrator: Harness) -> None:
    key = place_order(orchestrator, "2000.00")
    # The order's and the payment's events are of two rows: they may run in either order. Paid
    # either by the payment or by hand below, the order moves to paid once.
    pay(orchestrator, key, "2000.00")
    orchestrator.run_until_idle()
    orchestrator.sql("UPDATE shop.orders SET paid = true WHERE id = %s", (key,))
    orchestrator.run_until_idle()
    orchestrator.sql("UPDATE shop.orders SET paid = false WHERE id = %s", (key,))
    orchestrator.run_until_idle()
    done = steps(orchestrator, key)
    assert sorted(done[:2]) == ["check_payment", "validate"]
    assert done[2:] == ["approve", "payment_reversed"]
    assert order(orchestrator, key)["note"] == "payment reversed"


def test_a_stale_event_changes_nothing(orchestrator: Harness) -> None:
    key = place_order(orchestrator, "10.00")
    orchestrator.run_until_idle()
    # paid false -> true -> false before any dispatcher runs: the first event's write-back
    # compares paid with the true its event saw, finds false and writes nothing.
    orchestrator.sql("UPDATE shop.orders SET paid = true WHERE id = %s", (key,))
    orchestrator.sql("UPDATE shop.orders SET paid = false WHERE id = %s", (key,))
    orchestrator.run_until_idle()

    assert order(orchestrator, key)["approved"] is False
    paid = [(e["old_value"], e["new_value"], e["outcome"])
            for e in orchestrator.history("orders", key) if e["column_name"] == "paid"]
    assert paid == [("false", "true", "stale"), ("true", "false", "applied")]
    # The stale attempt's own writes (its step) rolled back with it.
    assert steps(orchestrator, key) == ["validate", "payment_reversed"]
    assert order(orchestrator, key)["note"] == "payment reversed"


def test_a_write_back_waiting_on_the_applications_write_compares_with_what_it_committed(
        orchestrator: Harness) -> None:
    key = place_order(orchestrator, "10.00")
    orchestrator.run_until_idle()
    orchestrator.sql("UPDATE shop.orders SET paid = true WHERE id = %s", (key,))
    with psycopg.connect(orchestrator.settings.dsn) as app:
        # The application takes the order back (not committed yet): the approve handler's
        # write-back waits for that row, then compares paid with what was committed.
        app.execute("UPDATE shop.orders SET paid = false WHERE id = %s", (key,))
        dispatcher = threading.Thread(target=orchestrator.run_until_idle)
        dispatcher.start()
        wait_for(lambda: orchestrator.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database()") == [(1,)],
            what="the write-back to wait for the application's lock")
        app.commit()
        dispatcher.join()
    orchestrator.run_until_idle()

    assert order(orchestrator, key)["approved"] is False
    paid = [(e["new_value"], e["outcome"])
            for e in orchestrator.history("orders", key) if e["column_name"] == "paid"]
    assert paid == [("true", "stale"), ("false", "applied")]


def test_two_dispatchers_run_each_orders_events_once_and_in_order(
        orchestrator: Harness) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            orchestrator.run_until_idle(concurrency=4)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def run_two() -> None:
        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        orchestrator.run_until_idle()  # whatever one of them left when the other made it idle

    keys = [place_order(orchestrator, "10.00", customer=f"c{n}") for n in range(12)]
    run_two()
    # Paid once validated: a payment checked before its order's validation is refused, and
    # nothing orders two rows' events, so the payments come after.
    for key in keys:
        pay(orchestrator, key, "10.00")
    run_two()

    assert errors == []
    for key in keys:
        done = steps(orchestrator, key)
        assert done[-1] == "dispatch", (key, done)
        ran = [s for s in done if s in ("validate", "approve", "assign_driver", "dispatch")]
        assert ran == ["validate", "approve", "assign_driver", "dispatch"], (key, done)
    # Each order's events ran one at a time in the order they were recorded.
    disorder = orchestrator.sql(
        "SELECT s.order_id FROM shop.steps s JOIN orchestrator.event_log e ON e.id = s.event_id"
        " WHERE e.workflow = 'orders' GROUP BY s.order_id"
        " HAVING array_agg(s.event_id ORDER BY s.seq) <> array_agg(s.event_id ORDER BY s.event_id)")
    assert disorder == []
    twice = orchestrator.sql("SELECT event_id FROM shop.steps GROUP BY 1 HAVING count(*) > 1")
    assert twice == []
    # Both dispatchers took part, or this test proved nothing about them.
    assert orchestrator.sql("SELECT count(DISTINCT claimed_by) FROM orchestrator.event_log"
                            " WHERE workflow = 'orders'")[0][0] >= 2

