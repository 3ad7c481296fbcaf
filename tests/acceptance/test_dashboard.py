"""The dashboard's HTTP side, as a script or another site would reach it: what it serves, what
it refuses, and how it refuses to start."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

from tests.acceptance.test_cli import assert_one_line_error, cli
from tests.support import database
from tests.support.dashboard import running_dashboard


def call(url: str, body: Any = None, **headers: str) -> tuple[int, Any]:
    """The status and decoded JSON (or text) of a GET, or of a POST when ``body`` is given."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    if body is not None and not isinstance(body, bytes):
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read().decode()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def dead_order(sql: Any, run_idle: Any) -> tuple[int, int]:
    """An order of the customer whose card expired, run until its charge is dead."""
    expired = sql("SELECT id FROM customers WHERE card = 'expired'")[0][0]
    order = database.place_order(sql, "D-1", customer_id=expired)
    run_idle()
    (event,) = sql("SELECT id FROM orchestrator.events WHERE status = 'dead'")[0]
    return order, event


def test_redrive_takes_json_from_the_page_with_the_token(dsn: str, sql: Any,
                                                         run_idle: Any) -> None:
    order, event = dead_order(sql, run_idle)
    token = {"X-Orchestrator-Token": "s3cret"}
    with running_dashboard(dsn, "--token", "s3cret") as base:
        url = base + "/api/redrive"
        assert call(url, {"ids": [event]})[0] == 401
        assert call(url, {"ids": [event]}, **{"X-Orchestrator-Token": "guess"})[0] == 401
        assert call(url, b"ids=1", **token)[0] == 415  # what a form on another site sends
        assert call(url, {"ids": [event]}, Origin="http://evil.example", **token)[0] == 403
        status, body = call(url, {"dead": True, "handler": "charge", "dry_run": True}, **token)
        assert status == 200 and body["dry_run"] is True
        assert [(e["id"], e["key"]) for e in body["events"]] == [(event, str(order))]
        assert sql("SELECT status FROM orchestrator.events WHERE id = %s", (event,)) == [
            ("dead",)]
        status, body = call(url, {"ids": [event]}, Origin=base, **token)
        assert status == 200 and [e["id"] for e in body["events"]] == [event]
        assert sql("SELECT status FROM orchestrator.events WHERE id = %s", (event,)) == [
            ("pending",)]
        status, body = call(url, {"ids": [event]}, **token)  # the CLI's own refusal, as JSON
        assert status == 400 and "not dead, nothing redriven" in body["error"]


def test_the_read_api_answers_in_json(dsn: str, sql: Any, run_idle: Any) -> None:
    order, event = dead_order(sql, run_idle)
    with running_dashboard(dsn) as base:
        status, overview = call(base + "/api/overview")
        assert status == 200
        food = next(w for w in overview["workflows"] if w["name"] == "food_order")
        assert food["states"]["failed"] == 1 and food["events"]["dead"] == 1
        status, events = call(base + "/api/events?status=dead&search=expired")
        assert status == 200 and [e["id"] for e in events] == [event]
        status, rows = call(base + "/api/rows?workflow=food_order&state=failed")
        assert status == 200 and [(r["key"], r["why"]) for r in rows] == [(str(order),
                                                                           "finished")]
        status, history = call(f"{base}/api/history?workflow=food_order&key={order}")
        assert status == 200 and history["state"] == "failed"
        assert call(base + "/api/history?workflow=food_order&key=999999")[0] == 404
        assert call(base + "/api/rows?workflow=food_order&state=flying")[0] == 400
        page = call(base + "/")[1]
        assert "https://" not in page and "http://" + base[7:] in page  # nothing from a CDN
        status, _ = call(base + "/", Host="rebound.example")  # DNS rebinding: refused
        assert status == 400


def test_the_dashboard_binds_beyond_localhost_only_with_a_token(dsn: str) -> None:
    assert_one_line_error(cli("dashboard", "--host", "0.0.0.0", "--dsn", dsn),
                          "beyond this machine", "--token")


def test_a_port_in_use_is_one_line(dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_error(cli("dashboard", "--port", str(port), "--dsn", dsn),
                              f"cannot listen on 127.0.0.1:{port}")


def test_the_dashboard_on_an_unmigrated_database(admin_dsn: str) -> None:
    name = database.unique_name()
    bare = database.create_database(admin_dsn, name)
    try:
        assert_one_line_error(cli("dashboard", "--dsn", bare), "run `orchestrator migrate`")
    finally:
        database.drop_database(admin_dsn, name)
