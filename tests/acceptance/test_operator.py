"""The demo and the operator commands, run as a user runs them."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator import signing
from orchestrator.db import LISTEN_APPLICATION_NAME
from tests.acceptance.test_cli import assert_one_line_error, cli
from tests.support import database, exactly_once, http, roles
from tests.support.processes import dispatcher, finish, wait_for


def cli_json(*args: str) -> Any:
    done = cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def demo_db(admin_dsn: str, template_db: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A database where `orchestrator demo` ran 60 orders (seed 8: four of them by the customer
    with the expired card, which fail); shared by the read-only tests."""
    name = database.unique_name()
    dsn = database.create_database(admin_dsn, name, template=template_db)
    summary = cli_json("demo", "--orders", "60", "--seed", "8", "--dsn", dsn)
    yield dsn, summary
    database.drop_database(admin_dsn, name)


def query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def test_demo_summary_matches_the_database(demo_db: tuple[str, dict[str, Any]]) -> None:
    dsn, summary = demo_db
    assert summary["all_terminal"] is True
    assert summary["orders"] == 60
    states = dict(query(dsn, "SELECT status, count(*) FROM orders GROUP BY 1"))
    assert summary["final_states"] == states
    assert set(states) <= {"delivered", "rejected", "cancelled", "failed"}
    applied = query(dsn, "SELECT count(*) FROM orchestrator.event_log WHERE outcome = 'applied'")
    assert summary["transitions"] == applied[0][0]
    dead = query(dsn, "SELECT count(*) FROM orchestrator.events WHERE status = 'dead'")
    assert summary["dead_events"] == dead[0][0] == states.get("failed", 0)
    # The demo's figure is read from payments, which has no UNIQUE constraint to hide a double.
    doubles = query(dsn, "SELECT count(*) FROM (SELECT order_id FROM payments GROUP BY 1"
                         " HAVING count(*) > 1) d")[0][0]
    assert summary["double_charges"] == doubles == 0
    exactly_once.assert_charged_once(lambda q, p=None: query(dsn, q, p))
    assert query(dsn, "SELECT count(*) FROM payments")[0][0] >= states["delivered"]
    assert summary["transitions_per_s"] > 0


def test_status_json(demo_db: tuple[str, dict[str, Any]]) -> None:
    dsn, summary = demo_db
    report = cli_json("status", "--dsn", dsn)
    by_name = {w["name"]: w for w in report["workflows"]}
    food = by_name["food_order"]
    assert food["table"] == "public.orders"
    assert {k: v for k, v in food["states"].items() if v} == summary["final_states"]
    assert food["events"] == {"pending": 0, "running": 0, "dead": summary["dead_events"],
                              "oldest_pending_age_s": None}


def test_events_json_filters(demo_db: tuple[str, dict[str, Any]]) -> None:
    dsn, summary = demo_db
    dead = cli_json("events", "--status", "dead", "--dsn", dsn)
    assert len(dead) == summary["dead_events"]
    assert all(e["status"] == "dead" and "expired" in e["last_error"] for e in dead)
    order = dead[0]["row_key"]
    mine = cli_json("events", "--order", order, "--limit", "3", "--dsn", dsn)
    assert len(mine) == 3
    assert {e["row_key"] for e in mine} == {order}
    assert [e["id"] for e in mine] == sorted((e["id"] for e in mine), reverse=True)


def test_history_json_shows_every_attempt(demo_db: tuple[str, dict[str, Any]]) -> None:
    dsn, _ = demo_db
    (order,) = query(dsn, "SELECT min(id) FROM orders WHERE status = 'failed'")[0]
    report = cli_json("history", str(order), "--workflow", "food_order", "--dsn", dsn)
    assert report["state"] == "failed" and report["key"] == str(order)
    changes = [(e["op"], e["old_value"], e["new_value"], e["outcome"]) for e in report["events"]]
    assert changes == [("INSERT", None, "placed", "applied"),
                       ("TIMER", "placed", "rejected", "cancelled"),  # the 15-minute deadline
                       ("UPDATE", "placed", "validated", "dead"),
                       ("UPDATE", "validated", "failed", "noop")]  # the `failed` handler ran
    charge = report["events"][2]
    assert charge["status"] == "dead" and charge["handler"].endswith(".charge")
    assert [x["attempt"] for x in charge["errors"]] == [1, 2, 3, 4]


def table_rows(text: str) -> list[list[str]]:
    """The rows of the tables in a command's text output, cell by cell (a cell folded over
    several lines is joined again)."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if cells[0] or not rows:
            rows.append(cells)
        else:
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
    return rows


def cli_text(*args: str) -> str:
    done = cli(*args, env={"COLUMNS": "160"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_status_text(demo_db: tuple[str, dict[str, Any]]) -> None:
    dsn, summary = demo_db
    text = cli_text("status", "--dsn", dsn)
    food = text[text.index("food_order"):]
    states = dict(query(dsn, "SELECT status, count(*) FROM orders GROUP BY 1"))
    expected = [[state, str(states.get(state, 0))] for state in (
        "placed", "validated", "paid", "approved", "agent_assigned", "picked_up", "delivered",
        "rejected", "cancelled", "failed")]
    assert table_rows(food) == expected
    assert f"events: 0 pending, 0 running, {summary['dead_events']} dead" in food


def test_events_text(demo_db: tuple[str, dict[str, Any]]) -> None:
    dsn, _ = demo_db
    dead = cli_json("events", "--status", "dead", "--dsn", dsn)
    rows = table_rows(cli_text("events", "--status", "dead", "--dsn", dsn))
    assert [r[:7] for r in rows] == [
        [str(e["id"]), "food_order", e["row_key"], "status: placed → validated", "dead", "dead",
         "4"] for e in dead]
    assert [r[7] for r in rows] == [e["last_error"] for e in dead]


def test_history_text(demo_db: tuple[str, dict[str, Any]]) -> None:
    dsn, _ = demo_db
    (order,) = query(dsn, "SELECT min(id) FROM orders WHERE status = 'failed'")[0]
    report = cli_json("history", str(order), "--workflow", "food_order", "--dsn", dsn)
    text = cli_text("history", str(order), "--workflow", "food_order", "--dsn", dsn)
    assert text.splitlines()[0] == f"food_order {order}: now failed"
    rows = table_rows(text)
    assert [r[0] for r in rows] == [str(e["id"]) for e in report["events"]]
    assert [(r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
        ("status: ∅ → placed", "validate", "done", "applied", "1"),
        ("deadline status: placed → rejected", "", "done", "cancelled", "0"),
        ("status: placed → validated", "charge", "dead", "dead", "4"),
        ("status: validated → failed", "failed", "done", "noop", "1")]
    charge_errors = rows[2][8]
    for attempt in (1, 2, 3, 4):
        assert f"#{attempt}: ProviderUnavailable: payment provider did not answer" in \
            charge_errors


def test_graph_mermaid_and_dot(demo_db: tuple[str, dict[str, Any]]) -> None:
    dsn, summary = demo_db
    mermaid = cli("graph", "--dsn", dsn, "--workflow", "food_order")
    assert mermaid.returncode == 0
    assert "stateDiagram-v2" in mermaid.stdout and "paid --> approved : approve" in mermaid.stdout
    dot = cli("graph", "--format", "dot", "--counts", "--dsn", dsn, "--workflow", "food_order")
    delivered = summary["final_states"].get("delivered", 0)
    assert f'label="delivered ({delivered})"' in dot.stdout
    assert dot.stdout.strip().endswith("}")


@pytest.mark.parametrize("args,fragment", [
    (["history", "999999", "--workflow", "food_order"], "has no row '999999'"),
    (["history", "abc", "--workflow", "food_order"], "has no row 'abc'"),
    (["fire", "1", "flying", "--workflow", "food_order"], "neither a state nor a trigger"),
    (["events", "--status", "sleeping"], "unknown event status 'sleeping'"),
    (["retry"], "name event ids, or use --dead"),
    (["retry", "1"], "not dead, nothing redriven: event 1 (done)"),
    (["graph", "--format", "png", "--workflow", "food_order"], "unknown graph format"),
    (["history", "1"], "several workflows: pick one with --workflow"),
])
def test_bad_operator_input_is_one_line(demo_db: tuple[str, dict[str, Any]], args: list[str],
                                        fragment: str) -> None:
    dsn, _ = demo_db
    assert_one_line_error(cli(*args, "--dsn", dsn), fragment)


def test_operator_commands_on_an_unmigrated_database(admin_dsn: str) -> None:
    name = database.unique_name()
    bare = database.create_database(admin_dsn, name)
    try:
        for args in (["status"], ["events"], ["fire", "1", "cancel"]):
            assert_one_line_error(cli(*args, "--dsn", bare), "run `orchestrator migrate`")
    finally:
        database.drop_database(admin_dsn, name)


def test_fire_checks_the_workflow_and_writes_nothing_when_refused(dsn: str, sql: Any) -> None:
    order = database.place_order(sql, "F-1")
    moved = cli_json("fire", str(order), "cancel", "--workflow", "food_order", "--dsn", dsn)
    assert moved == {"workflow": "food_order", "key": str(order), "from": "placed",
                     "to": "cancelled"}
    assert_one_line_error(cli("fire", str(order), "placed", "--workflow", "food_order",
                              "--dsn", dsn), "does not allow 'cancelled' -> 'placed'")
    assert_one_line_error(cli("fire", str(order), "cancel", "--workflow", "food_order",
                              "--dsn", dsn), "does not allow 'cancelled' -> 'cancel'")
    assert sql("SELECT status FROM orders WHERE id = %s", (order,)) == [("cancelled",)]


def test_retry_redrives_dead_events_and_restores_the_row(dsn: str, sql: Any,
                                                         run_idle: Any) -> None:
    expired = sql("SELECT id FROM customers WHERE card = 'expired'")[0][0]
    order = database.place_order(sql, "R-1", customer_id=expired)
    run_idle()
    assert sql("SELECT status FROM orders") == [("failed",)]
    dry = cli_json("retry", "--dead", "--handler", "charge", "--dry-run", "--dsn", dsn)
    assert dry["dry_run"] and [e["key"] for e in dry["events"]] == [str(order)]
    assert sql("SELECT status FROM orders") == [("failed",)]
    sql("UPDATE customers SET card = 'ok' WHERE id = %s", (expired,))  # the card was renewed
    done = cli_json("retry", str(dry["events"][0]["id"]), "--dsn", dsn)
    assert len(done["events"]) == 1
    assert sql("SELECT status FROM orders") == [("validated",)]
    run_idle()
    assert sql("SELECT status FROM orders") == [("delivered",)]
    history = cli_json("history", str(order), "--workflow", "food_order", "--dsn", dsn)
    charge = history["events"][2]
    assert [x["attempt"] for x in charge["errors"]] == [1, 2, 3, 4, 0]
    assert charge["status"] == "done" and charge["outcome"] == "applied"


def test_retry_without_the_admin_role_says_so_in_one_line(dsn: str, sql: Any,
                                                          run_idle: Any) -> None:
    expired = sql("SELECT id FROM customers WHERE card = 'expired'")[0][0]
    database.place_order(sql, "R-2", customer_id=expired)
    run_idle()
    [(event,)] = sql("SELECT id FROM orchestrator.events WHERE status = 'dead'")
    with roles.dispatcher_role(dsn) as role_dsn:
        assert_one_line_error(cli("retry", str(event), "--dsn", role_dsn),
                              f"redriving event {event} would move its row out of the failure "
                              "state, which only members of orchestrator_admin may do")
    assert sql("SELECT status FROM orders") == [("failed",)]
    assert sql("SELECT status FROM orchestrator.events WHERE id = %s", (event,)) == [("dead",)]


# Text a handler's error or a row may hold: rich markup, a terminal link, escape sequences and
# a line of its own.
HOSTILE = ("[/] [link=http://evil.example]click[/link] [bold]"
           "\x1b]8;;http://evil.example\x1b\\here\x1b]8;;\x1b\\ \x1b[2J\nerror: forged")


def test_database_text_is_shown_as_text_never_as_markup(dsn: str, sql: Any) -> None:
    [(job,)] = sql("INSERT INTO jobs DEFAULT VALUES RETURNING id")
    [(event,)] = sql("UPDATE orchestrator.events SET status = 'dead', last_error = %s"
                     " RETURNING id", (HOSTILE,))
    sql("INSERT INTO orchestrator.event_errors (event_id, attempt, error) VALUES (%s, 1, %s)",
        (event, HOSTILE))
    wide = {"COLUMNS": "1000"}  # rich folds table cells to the terminal's width
    for args in (["events"], ["history", str(job), "--workflow", "jobs"],
                 ["retry", str(event), "--dry-run"]):
        done = cli(*args, "--dsn", dsn, env=wide)
        assert done.returncode == 0, done.stderr
        assert "[/] [link=http://evil.example]click[/link] [bold]" in done.stdout
        assert "\\x1b]8;;http://evil.example" in done.stdout and "\x1b" not in done.stdout
        assert "\\nerror: forged" in done.stdout
        assert not [line for line in done.stdout.splitlines() if line.startswith("error")]


def test_seed_json(dsn: str) -> None:
    seeded = cli_json("seed", "--orders", "5", "--seed", "9", "--dsn", dsn)
    assert seeded["orders"] == 5 and seeded["last_id"] - seeded["first_id"] == 4


def test_the_same_seed_gives_the_same_final_states(admin_dsn: str, template_db: str) -> None:
    outcomes = []
    names = [database.unique_name(), database.unique_name()]
    try:
        for name in names:
            dsn = database.create_database(admin_dsn, name, template=template_db)
            cli_json("demo", "--orders", "40", "--seed", "11", "--concurrency", "4", "--dsn", dsn)
            outcomes.append(query(dsn, "SELECT ref, status, total_cents FROM orders ORDER BY ref"))
    finally:
        for name in names:
            database.drop_database(admin_dsn, name)
    assert len(outcomes[0]) == 40
    assert outcomes[0] == outcomes[1]
    assert len({status for _, status, _ in outcomes[0]}) >= 2


def test_several_dispatchers_never_charge_twice_nor_double_book_an_agent(
        dsn: str, sql: Any) -> None:
    # All three listen before the orders are placed, so that each takes part.
    procs = [dispatcher(dsn, until_idle=False, handlers="orchestrator.demo.handlers",
                        concurrency="6", pool_size="8") for _ in range(3)]
    try:
        wait_for(lambda: sql("SELECT count(*) FROM pg_stat_activity WHERE application_name"
                             " = %s", (LISTEN_APPLICATION_NAME,))[0][0] == 3
                 or any(p.poll() is not None for p in procs), what="three dispatchers")
        assert cli("seed", "--orders", "120", "--seed", "5", "--dsn", dsn).returncode == 0
        wait_for(lambda: sql("SELECT count(*) FROM orchestrator.events WHERE status IN"
                             " ('pending', 'running') AND op <> 'TIMER'")[0][0] == 0
                 and sql("SELECT count(*) FROM orders WHERE status NOT IN ('delivered',"
                         " 'rejected', 'cancelled', 'failed')")[0][0] == 0,
                 timeout_s=240, what="every order to finish")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            finish(proc)
    exactly_once.assert_charged_once(sql)
    exactly_once.assert_no_state_written_twice(sql)
    paid_then = sql("SELECT count(*) FROM orders WHERE paid_at IS NOT NULL")[0][0]
    assert sql("SELECT count(*) FROM payments") == [(paid_then,)]
    assert sql("SELECT count(*) FROM agents WHERE active_order IS NOT NULL") == [(0,)]
    spans = sql("SELECT agent_id, agent_assigned_at, coalesce(delivered_at, cancelled_at,"
                " failed_at) FROM orders WHERE agent_id IS NOT NULL ORDER BY 1, 2")
    assert len(spans) > 20
    for (a1, _, end1), (a2, start2, _) in pairwise(spans):
        if a1 == a2:
            assert end1 <= start2, f"agent {a1} had two orders at once"
    claimants = sql("SELECT count(DISTINCT claimed_by) FROM orchestrator.event_log"
                    " WHERE workflow = 'food_order' AND op <> 'TIMER'")[0][0]
    assert claimants == 3, "not every dispatcher took part"
    # Only the expired card fails: no race between dispatchers kills an event.
    assert sql("SELECT last_error FROM orchestrator.events WHERE status = 'dead'"
               " AND last_error NOT LIKE '%%expired%%'") == []


def test_the_demo_exits_1_when_orders_are_left_unfinished(dsn: str, sql: Any) -> None:
    # The pick-up step is served by a function that answers "nothing to do": every order that
    # gets that far stays with its agent (with no deadline to move it), and the demo says so.
    async def nothing(request: Request) -> JSONResponse:
        return JSONResponse({"outcome": "none"})

    app = Starlette(routes=[Route("/pick-up", nothing, methods=["POST"])])
    with http.serve(app) as url:
        done = cli("demo", "--orders", "5", "--json", "--dsn", dsn, timeout=240,
                   env={"FOOD_ORDER_PICK_UP_URL": f"{url}/pick-up",
                        signing.SECRETS_ENV: "demo-SECRET"})
    assert_one_line_error(done, "some orders did not reach a terminal state")
    summary = json.loads(done.stdout)
    states = dict(sql("SELECT status, count(*) FROM orders GROUP BY 1"))
    assert summary["all_terminal"] is False and summary["final_states"] == states
    assert states.get("agent_assigned", 0) > 0 and \
        set(states) <= {"agent_assigned", "rejected", "failed"}, states


def test_demo_from_a_fresh_embedded_server() -> None:
    with database.private_dir("cli") as data_dir:
        run_test_demo_from_a_fresh_embedded_server({"ORCHESTRATOR_DATA_DIR": str(data_dir)})


def run_test_demo_from_a_fresh_embedded_server(env: dict[str, str]) -> None:
    try:
        done = cli("demo", "--orders", "30", "--json", env=env, timeout=240)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["all_terminal"] and summary["orders"] == 30
        human = cli("demo", "--orders", "10", env=env, timeout=240)
        assert human.returncode == 0, human.stderr
        assert "transitions per second" in human.stdout
        assert "orders charged twice" in human.stdout
        # The summary against the embedded database itself.
        uri = cli("db", "url", env=env).stdout.strip()
        states = dict(query(uri, "SELECT status, count(*) FROM orders GROUP BY 1"))
        assert sum(states.values()) == 40
        assert set(states) <= {"delivered", "rejected", "cancelled", "failed"}, states
        first = dict(query(uri, "SELECT status, count(*) FROM orders WHERE id <= 30"
                                " GROUP BY 1"))
        assert summary["final_states"] == first
        exactly_once.assert_charged_once(lambda q, p=None: query(uri, q, p))
    finally:
        cli("db", "stop", env=env)


def test_prune_by_hand_and_a_timeline_that_says_what_it_lost(dsn: str, sql: Any) -> None:
    order = database.place_order(sql, "prune-1")
    assert cli("run", "--until-idle", "--dsn", dsn).returncode == 0
    sql("UPDATE orchestrator.events SET finished_at = now() - interval '5 days'"
        " WHERE row_key = %s AND op = 'INSERT'", (str(order),))
    dry = cli_json("prune", "--older-than", "3d", "--dry-run", "--dsn", dsn)
    assert dry == {"dry_run": True, "dead": False, "events": 1, "partitions": 0,
                   "finished_before": dry["finished_before"]}
    done = cli("prune", "--older-than", "3d", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("removed: 1 finished events (1 partitions of history")
    story = cli("history", str(order), "--workflow", "food_order", "--dsn", dsn)
    assert "older history pruned: events finished before" in story.stdout
    assert cli_json("history", str(order), "--workflow", "food_order", "--dsn", dsn)[
        "pruned_before"] is not None
    assert "older history pruned" in cli("events", "--dsn", dsn).stdout
    assert cli_json("prune", "--dead", "--dsn", dsn)["events"] == 0
    assert_one_line_error(cli("prune", "--older-than", "soon", "--dsn", dsn),
                          "'soon' is not a duration")
