"""Installing a workflow's triggers: one name per trigger whatever the names' lengths, the state
column's capture first, and reinstalling touches exactly the triggers the orchestrator made for
that workflow."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from orchestrator import Workflow, schema
from orchestrator.errors import DefinitionError

# Two column names of 63 bytes that differ only at their end: cut to fit a trigger's name,
# they would be the same.
LONG_A = "a" * 62 + "1"
LONG_B = "a" * 62 + "2"


def workflow(name: str, column: str = "status", watch: tuple[str, ...] = ()) -> Workflow:
    return Workflow(name, table="public.things", column=column, states=["new", "done"],
                    initial="new", terminal=["done"], transitions=[("finish", "new", "done")],
                    watch=watch)


def triggers(sql: Any) -> dict[str, str]:
    """The triggers on ``things``: name -> the function and arguments they call."""
    rows = sql("SELECT tgname, regexp_replace(pg_get_triggerdef(oid), '.* EXECUTE FUNCTION ', '')"
               " FROM pg_trigger WHERE tgrelid = 'things'::regclass AND NOT tgisinternal")
    return dict(rows)


def install(dsn: str, *workflows: Workflow) -> None:
    with psycopg.connect(dsn) as conn:
        schema.install_workflows(conn, *workflows)


@pytest.fixture
def things(sql: Any) -> None:
    sql(f"""CREATE TABLE things (id bigint PRIMARY KEY, status text NOT NULL DEFAULT 'new',
                                 stage text NOT NULL DEFAULT 'new', note text,
                                 "{LONG_A}" text, "{LONG_B}" text)""")


def test_every_trigger_has_its_own_name_however_long_the_names(
        dsn: str, sql: Any, things: None) -> None:
    wf = workflow("w" * 30, watch=(LONG_A, LONG_B, "note"))
    install(dsn, wf)
    made = triggers(sql)
    assert len(made) == 7  # 2 guards, capture on INSERT, of the state column and 3 watched
    assert all(len(name.encode()) <= 63 and name.startswith("orchestrator_w") for name in made)
    assert sum(f"'{LONG_A}'" in call for call in made.values()) == 1
    assert sum(f"'{LONG_B}'" in call for call in made.values()) == 1

    # One statement changing a watched column and the state: the state's event comes first.
    sql("INSERT INTO things (id) VALUES (1)")
    sql(f"""UPDATE things SET "{LONG_B}" = 'x', note = 'y', status = 'done'""")
    assert sql("SELECT column_name FROM orchestrator.events WHERE op = 'UPDATE' ORDER BY id"
               )[0] == ("status",)


def test_reinstalling_drops_exactly_the_workflows_own_triggers(
        dsn: str, sql: Any, things: None) -> None:
    """``_`` is a wildcard of LIKE: a prefix match of "orchestrator_order_" would take the
    triggers of order_v2 and the application's own orchestrator_order_audit."""
    sql("CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$")
    sql("CREATE TRIGGER orchestrator_order_audit BEFORE UPDATE ON things"
        " FOR EACH ROW EXECUTE FUNCTION audit()")
    install(dsn, workflow("order", watch=("note",)), workflow("order_v2", column="stage"))
    before = triggers(sql)
    assert len(before) == 1 + 5 + 4

    install(dsn, workflow("order"))  # no longer watches note
    after = triggers(sql)
    assert set(before) - set(after) == {"orchestrator_order_capture_1_note"}
    assert {n for n in after if "order_v2" in n} == {n for n in before if "order_v2" in n}
    assert "orchestrator_order_audit" in after


def test_a_trigger_of_someone_else_is_never_replaced(dsn: str, sql: Any, things: None) -> None:
    sql("CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$")
    sql("CREATE TRIGGER orchestrator_mine_guard_update BEFORE UPDATE ON things"
        " FOR EACH ROW EXECUTE FUNCTION audit()")
    with pytest.raises(DefinitionError, match="already has a trigger "
                       "'orchestrator_mine_guard_update' that is not this workflow's"):
        install(dsn, workflow("mine"))
    assert triggers(sql) == {"orchestrator_mine_guard_update": "audit()"}


def test_an_arrival_no_handler_serves_is_recorded_finished_and_wakes_nobody(
        dsn: str, sql: Any, things: None) -> None:
    wf = workflow("served")
    wf.on_enter("new")(lambda event: "done")
    install(dsn, wf)
    assert [call for name, call in triggers(sql).items() if "capture" in name] == [
        "orchestrator.capture_v4('served', 'id', 'status', '', 'done')"] * 2
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN orchestrator")
        sql("INSERT INTO things (id) VALUES (1)")
        assert len(list(listener.notifies(timeout=1, stop_after=1))) == 1
        sql("UPDATE things SET status = 'done'")
        assert list(listener.notifies(timeout=0.5)) == []
    assert sql("SELECT new_value, status, outcome, attempts, finished_at IS NOT NULL"
               " FROM orchestrator.events ORDER BY id") == [
        ("new", "pending", None, 0, False), ("done", "done", "no_handler", 0, True)]


def test_a_workflow_without_handlers_records_every_arrival_as_work(
        dsn: str, sql: Any, things: None) -> None:
    install(dsn, workflow("bare"))  # as rebuilt from its stored definition: no handlers
    assert "'status')" in triggers(sql)["orchestrator_bare_capture_insert"]
    sql("INSERT INTO things (id) VALUES (1)")
    sql("UPDATE things SET status = 'done'")
    assert sql("SELECT status FROM orchestrator.events ORDER BY id") == [
        ("pending",), ("pending",)]
