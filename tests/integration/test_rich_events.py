"""Rich events: the writing transaction's session variables and a workflow's related data,
given to Python handlers and to remote ones in both request shapes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from orchestrator import Event, Related, Remote, Workflow, admin, schema
from orchestrator.app import Orchestrator
from orchestrator.config import Settings
from orchestrator.dispatcher import Stats
from orchestrator.errors import DefinitionError, NotMigrated
from orchestrator.registry import Registry
from tests.conftest import FAST
from tests.support import http

TABLES = """
CREATE TABLE shop_customers (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE shop_orders (id bigint PRIMARY KEY, status text NOT NULL DEFAULT 'new',
                     customer_id bigint REFERENCES shop_customers, note text);
CREATE TABLE shop_items (id bigserial PRIMARY KEY, order_id bigint REFERENCES shop_orders,
                          sku text NOT NULL, qty integer NOT NULL);
INSERT INTO shop_customers VALUES (7, 'Ada'), (8, 'Bob');
"""
RELATED = {
    "items": Related.children("public.shop_items", "order_id"),
    "customer": Related.parent("shop_customers", "customer_id"),
    "totals": Related.query("SELECT count(*) AS lines, sum(qty) AS qty FROM shop_items "
                            "WHERE order_id = %(id)s"),
}
SESSION = {"x-user-id": "42", "x-role": "clerk"}


def orders(**related: Related) -> Workflow:
    return Workflow("shop_orders", table="public.shop_orders", states=["new", "seen", "failed"],
                    initial="new", terminal=["seen", "failed"], failure_state="failed",
                    transitions=[("see", "new", "seen")], related=related or RELATED)


def place_order(dsn: str, order_id: int, customer_id: int | None,
                session: str | None = json.dumps(SESSION),
                setting: str = "orchestrator.session") -> None:
    """One application transaction: the order and its items, with its session variables."""
    with psycopg.connect(dsn) as conn:
        if session is not None:
            conn.execute("SELECT set_config(%s, %s, true)", (setting, session))
        conn.execute("INSERT INTO shop_orders (id, customer_id) VALUES (%s, %s)",
                     (order_id, customer_id))
        conn.execute("INSERT INTO shop_items (order_id, sku, qty) VALUES (%s, 'A1', 2),"
                     " (%s, 'B2', 3)", (order_id, order_id))


def dispatch(dsn: str, wf: Workflow) -> Stats:
    settings = Settings.load(env={}, dsn=dsn, concurrency=4, **FAST)
    with Orchestrator(settings, Registry([wf])) as orch:
        return orch.dispatcher(until_idle=True).run()


def install(dsn: str, wf: Workflow) -> None:
    with psycopg.connect(dsn) as conn:
        schema.install_workflows(conn, wf)


@pytest.fixture
def tables(sql: Any) -> None:
    sql(TABLES)


def test_a_python_handler_gets_the_session_variables_and_the_related_data(
        dsn: str, sql: Any, tables: None) -> None:
    wf = orders()
    seen: list[Event] = []

    @wf.on_enter("new")
    def see(event: Event) -> str:
        seen.append(event)
        return "seen"

    install(dsn, wf)
    place_order(dsn, 1, 7)
    place_order(dsn, 2, None, session=None)
    assert dispatch(dsn, wf).applied == 2
    first, second = sorted(seen, key=lambda e: e.id)
    assert dict(first.session_variables) == SESSION
    assert sorted((i["sku"], i["qty"]) for i in first.related["items"]) == [("A1", 2), ("B2", 3)]
    assert first.related["customer"] == {"id": 7, "name": "Ada"}
    # The INSERT's event is claimed after the items' commit: the query sees them.
    assert first.related["totals"] == [{"lines": 2, "qty": 5}]
    assert second.session_variables == {} and second.related["customer"] is None
    # The dispatcher's write-backs set no session: the arrivals in 'seen' have none.
    assert sql("SELECT op, session_variables FROM orchestrator.event_log ORDER BY id") == [
        ("INSERT", SESSION), ("INSERT", None), ("UPDATE", None), ("UPDATE", None)]
    # An operator sees who made each change in the row's history.
    with Orchestrator(Settings.load(env={}, dsn=dsn), Registry([wf])) as orch:
        timeline = admin.history(orch.reports, wf, "1")["events"]
    assert [e["session_variables"] for e in timeline] == [SESSION, None]


def test_hasura_user_is_read_when_orchestrator_session_is_unset(
        dsn: str, sql: Any, tables: None) -> None:
    install(dsn, orders())
    place_order(dsn, 1, 7, session='{"x-hasura-user-id": "9"}', setting="hasura.user")
    with psycopg.connect(dsn) as conn:  # both set: orchestrator.session wins
        conn.execute("SELECT set_config('hasura.user', '{\"from\": \"hasura\"}', true),"
                     " set_config('orchestrator.session', '{\"from\": \"app\"}', true)")
        conn.execute("UPDATE shop_orders SET status = 'seen' WHERE id = 1")
    assert sql("SELECT session_variables FROM orchestrator.events ORDER BY id") == [
        ({"x-hasura-user-id": "9"},), ({"from": "app"},)]


@pytest.mark.parametrize("value,message", [
    ('"just a string"', "must be a JSON object, not \"just a string\""),
    ("[1, 2]", "must be a JSON object, not [1, 2]"),
    ("{not json", "invalid input syntax for type json"),
])
def test_session_variables_that_are_not_a_json_object_fail_the_write(
        dsn: str, sql: Any, tables: None, value: str, message: str) -> None:
    install(dsn, orders())
    with pytest.raises(psycopg.Error, match=re.escape(message)):
        place_order(dsn, 1, 7, session=value)
    assert sql("SELECT count(*) FROM shop_orders") == [(0,)]


def test_bad_declarations_fail_when_the_workflow_is_built() -> None:
    with pytest.raises(DefinitionError, match=r"related 'x': give Related\.children"):
        orders(x="shop_items")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="write a literal % as %%"):
        orders(x=Related.query("SELECT * FROM shop_items WHERE sku LIKE 'A%'"))
    with pytest.raises(DefinitionError, match="related 'no such': a name is letters"):
        orders(**{"no such": Related.parent("shop_customers", "customer_id")})


@pytest.mark.parametrize("related,message", [
    (Related.children("shop_lines", "order_id"), 'relation "public.shop_lines" does not'),
    (Related.children("shop_items", "order_no"), 'column c.order_no does not exist'),
    (Related.parent("shop_customers", "client_id"),
     "table public.shop_orders has no column 'client_id'"),
    (Related.query("SELECT * FROM shop_items WHERE order_id = %(order_no)s"),
     "table public.shop_orders has no column 'order_no'"),
    (Related.query("SELEC 1"), 'syntax error at or near "1"'),
])
def test_bad_declarations_fail_at_migrate_with_one_line(
        dsn: str, sql: Any, tables: None, related: Related, message: str) -> None:
    with pytest.raises(DefinitionError, match=f"workflow 'shop_orders': related 'x': .*{message}"
                       ) as caught:
        install(dsn, orders(x=related))
    assert "\n" not in str(caught.value)
    assert sql("SELECT count(*) FROM orchestrator.workflows WHERE name = 'shop_orders'") == [(0,)]


def test_related_data_that_cannot_be_read_fails_the_attempt(
        dsn: str, sql: Any, tables: None) -> None:
    wf = orders(gone=Related.query("SELECT * FROM shop_items WHERE order_id = %(id)s"))
    wf.on_enter("new")(lambda event: "seen")
    install(dsn, wf)
    place_order(dsn, 1, 7)
    sql("ALTER TABLE shop_items RENAME TO shop_lines")
    stats = dispatch(dsn, wf)
    assert stats.dead == 1
    [(status, error)] = sql("SELECT status, last_error FROM orchestrator.events"
                            " WHERE op = 'INSERT'")
    assert status == "dead" and "related data" in error and "shop_items" in error
    assert sql("SELECT status FROM shop_orders") == [("failed",)]


# -- remote handlers -----------------------------------------------------------------------

Received = list[dict[str, Any]]


@pytest.fixture
def endpoint() -> Iterator[tuple[Received, str]]:
    received: Received = []

    async def handle(request: Request) -> Response:
        body = json.loads(await request.body())
        received.append(body)
        if request.path_params["shape"] == "hasura":
            return PlainTextResponse("ok")
        return JSONResponse({"outcome": "next", "state": "seen"})

    app = Starlette(routes=[Route("/{shape}", handle, methods=["POST"])])
    with http.serve(app) as url:
        yield received, url


@pytest.mark.parametrize("shape,where", [
    ("v1", lambda body: body),
    ("hasura", lambda body: body["event"]),
])
def test_a_remote_handler_gets_them_in_either_request_shape(
        dsn: str, tables: None, endpoint: tuple[Received, str], shape: str,
        where: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    received, url = endpoint
    wf = orders()
    handler = Remote("see", f"{url}/{shape}", secrets=["s"], shape=shape)
    wf.on_enter("new")(handler)
    install(dsn, wf)
    place_order(dsn, 1, 8)
    try:
        stats = dispatch(dsn, wf)
    finally:
        handler.close()
    assert (stats.applied, stats.noop) == ((1, 0) if shape == "v1" else (0, 1))
    [body] = received
    assert where(body)["session_variables"] == SESSION
    related = where(body)["related"]
    assert related["customer"] == {"id": 8, "name": "Bob"}
    assert related["totals"] == [{"lines": 2, "qty": 5}]
    assert sorted(i["sku"] for i in related["items"]) == ["A1", "B2"]


# -- the migration ---------------------------------------------------------------------------

FUNCTIONS = ("SELECT DISTINCT tgfoid::regproc::text FROM pg_trigger"
             " WHERE tgrelid = 'shop_orders'::regclass AND tgname LIKE '%capture%'")


def test_revision_0007_goes_down_and_up_with_events_in_queue_and_history(
        dsn: str, sql: Any, tables: None) -> None:
    wf = orders()
    wf.on_enter("new")(lambda event: "seen")
    install(dsn, wf)
    place_order(dsn, 1, 7)
    dispatch(dsn, wf)
    sql("SELECT orchestrator.archive_v1(now() + interval '1 hour', NULL, true, '1 day')")
    place_order(dsn, 2, 8)  # pending in the queue
    before = sql("SELECT id, op, row_key FROM orchestrator.event_log ORDER BY id")
    assert sql("SELECT count(*) FROM orchestrator.events_history") == [(2,)]

    schema.downgrade(dsn, "0006")
    assert sql(FUNCTIONS) == [("orchestrator.capture_v3",)]
    assert sql("SELECT id, op, row_key FROM orchestrator.event_log ORDER BY id") == before
    assert sql("SELECT count(*) FROM information_schema.columns"
               " WHERE column_name = 'session_variables'") == [(0,)]
    place_order(dsn, 3, 7)  # capture_v3 records it; the setting is ignored
    with pytest.raises(NotMigrated, match="older than this version: run `orchestrator migrate`"):
        dispatch(dsn, wf)

    schema.upgrade(dsn)
    assert sql(FUNCTIONS) == [("orchestrator.capture_v4",)]
    place_order(dsn, 4, 8)
    assert sql("SELECT row_key, session_variables FROM orchestrator.event_log"
               " WHERE op = 'INSERT' ORDER BY id") == [
        ("1", None), ("2", None), ("3", None), ("4", SESSION)]
    assert dispatch(dsn, wf).applied == 3
    sql("SELECT orchestrator.archive_v1(now() + interval '1 hour', NULL, true, '1 day')")
    assert sql("SELECT row_key FROM orchestrator.events_history"
               " WHERE session_variables = %s::jsonb", (json.dumps(SESSION),)) == [("4",)]
