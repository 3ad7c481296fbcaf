"""What operators use works for column routes as for a state machine: retries and dead
events, redrive, status, a row's history, the dashboard and the metrics' gauges."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from orchestrator import admin
from orchestrator.app import Orchestrator
from orchestrator.errors import OrchestratorError
from orchestrator.metrics import DatabaseGauges
from orchestrator.testing import Harness
from orchestrator.web import create_app
from tests.integration.lifecycle.test_column_routes import order, pay, place_order


@pytest.fixture
def app(orchestrator: Harness) -> Iterator[Orchestrator]:
    with Orchestrator(orchestrator.settings, orchestrator.registry) as running:
        yield running


def test_a_dead_column_route_event_is_redriven_and_the_order_carries_on(
        orchestrator: Harness, app: Orchestrator) -> None:
    orchestrator.sql("DELETE FROM shop.drivers")  # assign_driver fails: nobody to assign
    key = place_order(orchestrator, "10.00")
    orchestrator.run_until_idle()
    pay(orchestrator, key, "10.00")
    stats = orchestrator.run_until_idle(max_attempts=2)

    (dead,) = orchestrator.dead_events("orders")
    assert (dead["column_name"], dead["new_value"], dead["attempts"]) == ("approved", "true", 2)
    assert "ZeroDivisionError" in dead["last_error"]
    assert (stats.retried, stats.dead) == (1, 1)

    orchestrator.sql("INSERT INTO shop.drivers (name) VALUES ('kim')")
    assert [r["id"] for r in admin.redrive(app.reports, ids=[dead["id"]])] == [dead["id"]]
    orchestrator.run_until_idle()
    assert order(orchestrator, key)["note"] == "on its way with kim"


def test_status_history_dashboard_and_gauges_show_a_workflow_without_states(
        orchestrator: Harness, app: Orchestrator) -> None:
    key = place_order(orchestrator, "10.00")
    orchestrator.run_until_idle()
    pay(orchestrator, key, "10.00")
    orchestrator.run_until_idle()

    status = {w["name"]: w for w in admin.status(app.reports)["workflows"]}
    assert status["orders"]["states"] == {}
    assert status["orders"]["events"] | {"oldest_pending_age_s": None} == {
        "pending": 0, "running": 0, "dead": 0, "oldest_pending_age_s": None}
    orders = admin.workflows(app.reports)["orders"]
    assert orders.column is None and orders.states == ()
    with pytest.raises(OrchestratorError, match="has no states to draw"):
        admin.graph(orders)
    with pytest.raises(OrchestratorError, match="no state column, so no path"):
        orchestrator.path("orders", key)
    timeline = admin.history(app.reports, orders, str(key))["events"]
    # validated NULL -> true is not there: no route serves it (only to=False does).
    assert [(e["column_name"], e["new_value"]) for e in timeline] == [
        ("placed_at", timeline[0]["new_value"]), ("paid", "true"), ("approved", "true"),
        ("driver_assigned", "true")]

    async def dashboard() -> list[httpx.Response]:
        web = create_app(app.reports, where="here")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web),
                                     base_url="http://127.0.0.1") as http:
            return [await http.get(path) for path in (
                "/", "/api/overview", "/api/events?workflow=orders",
                f"/api/history?workflow=orders&key={key}", "/api/rows?stuck=1")]

    answers = asyncio.run(dashboard())
    assert [a.status_code for a in answers] == [200] * len(answers)
    assert answers[3].json()["events"][-1]["column_name"] == "driver_assigned"

    families = {f.name: f for f in DatabaseGauges(app.reports, [orders], 0.0).collect()}
    assert [s.value for s in families["orchestrator_database_up"].samples] == [1]
    assert [s.labels for s in families["orchestrator_dead_events"].samples] == [
        {"workflow": "orders"}]
