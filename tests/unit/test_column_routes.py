"""Column routes: value conditions on a watched column's changes, their capture conditions, and
workflows without a state column."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import Workflow
from orchestrator.errors import DefinitionError, RegistrationError
from orchestrator.install import _insert_when, _trigger_specs, _update_when


def handler(event: Any) -> None:
    return None


def lifecycle() -> Workflow:
    return Workflow("orders", table="shop.orders", column=None,
                    watch=["paid", "approved", "placed_at", "status"])


def test_a_route_matches_the_values_it_names_as_the_event_log_records_them() -> None:
    wf = lifecycle()
    wf.on_column("paid", from_=[False, None], to=True)(handler)
    (spec,) = wf.handlers
    assert spec.route.change is not None
    assert (spec.route.change.old, spec.route.change.new) == (("false", None), ("true",))
    assert wf.handlers.find("paid", "false", "true") is spec
    assert wf.handlers.find("paid", None, "true") is spec
    assert wf.handlers.find("paid", "true", "false") is None
    assert wf.handlers.find("approved", "false", "true") is None


def test_a_route_leaving_a_value_and_one_for_any_change_share_a_column() -> None:
    wf = lifecycle()
    left = wf.on_column("status", from_="paid")(lambda e: None)
    other = wf.on_change("status")(lambda e: None)
    assert wf.handlers.find("status", "paid", "refunded").fn is left
    assert wf.handlers.find("status", "new", "paid").fn is other


@pytest.mark.parametrize(("first", "second"), [
    ({"to": True}, {"from_": None}),
    ({"to": True}, {}),
    ({"from_": [False, None], "to": True}, {"from_": None, "to": [True, False]}),
])
def test_two_routes_that_would_both_serve_a_change_are_refused(
        first: dict[str, Any], second: dict[str, Any]) -> None:
    wf = lifecycle()
    wf.on_column("paid", **first)(handler)
    with pytest.raises(RegistrationError, match="already has handler"):
        wf.on_column("paid", **second)(lambda e: None)


def test_routes_on_disjoint_values_of_one_column_live_side_by_side() -> None:
    wf = lifecycle()
    wf.on_column("paid", to=True)(handler)
    wf.on_column("paid", to=False)(lambda e: None)
    wf.on_column("approved", to=True)(lambda e: None)
    assert len(list(wf.handlers)) == 3
    assert len({spec.route.key for spec in wf.handlers}) == 3


@pytest.mark.parametrize(("column", "values", "message"), [
    ("paid", {"to": 1.5}, "not float"),
    ("paid", {"to": []}, "matches no change"),
    ("note", {"to": True}, "does not watch column 'note'"),
])
def test_a_route_the_workflow_cannot_honour_fails_at_registration(
        column: str, values: dict[str, Any], message: str) -> None:
    with pytest.raises(RegistrationError, match=message):
        lifecycle().on_column(column, **values)(handler)


def test_a_workflow_without_a_state_column_has_no_states_and_no_state_routes() -> None:
    wf = lifecycle()
    assert (wf.column, wf.states, wf.initial, wf.transitions) == (None, (), None, ())
    with pytest.raises(RegistrationError, match="has no state column"):
        wf.on_enter("paid")(handler)
    with pytest.raises(DefinitionError, match="cannot have states"):
        Workflow("x", table="t", column=None, states=["a"], watch=["paid"])
    with pytest.raises(DefinitionError, match="watches no column"):
        Workflow("x", table="t", column=None)
    with pytest.raises(DefinitionError, match="needs an initial state"):
        Workflow("x", table="t", states=["a"])


def test_the_definition_names_each_route_and_rebuilds_the_workflow() -> None:
    wf = lifecycle()
    wf.on_column("paid", from_=[False, None], to=True)(handler)
    definition = wf.definition()
    assert definition["column"] is None
    assert list(definition["handlers"]) == ['paid:[null, "false"]=>["true"]']
    rebuilt = Workflow.from_definition(definition)
    assert (rebuilt.column, rebuilt.watch) == (None, wf.watch)


def sql_text(composable: Any) -> str:
    return str(composable.as_string(None))


def test_captures_of_a_column_served_by_routes_alone_fire_only_for_what_they_serve() -> None:
    wf = lifecycle()
    wf.on_column("paid", from_=[False, None], to=True)(handler)
    wf.on_column("placed_at", from_=None)(lambda e: None)
    wf.on_change("approved")(lambda e: None)
    assert sql_text(_update_when(wf, "paid")) == (
        'OLD."paid" IS DISTINCT FROM NEW."paid" AND (((OLD."paid" = \'false\''
        ' OR OLD."paid" IS NULL) AND (NEW."paid" = \'true\')))')
    assert sql_text(_insert_when(wf, "paid")) == (
        'NEW."paid" IS NOT NULL AND ((NEW."paid" = \'true\'))')
    assert sql_text(_insert_when(wf, "placed_at")) == 'NEW."placed_at" IS NOT NULL AND (true)'
    assert _insert_when(wf, "approved") is None  # on_change: updates only, as before
    assert sql_text(_update_when(wf, "approved")) == (
        'OLD."approved" IS DISTINCT FROM NEW."approved"')
    suffixes = [suffix for suffix, _ in _trigger_specs(wf, guarded=True)]
    assert suffixes == ["capture_0_paid", "insert_0_paid", "capture_1_approved",
                        "capture_2_placed_at", "insert_2_placed_at", "capture_3_status"]


def test_routes_on_the_state_column_keep_arrivals_they_serve_out_of_the_unserved() -> None:
    wf = Workflow("wf", table="t", states=["a", "b", "c"], initial="a",
                  transitions=[("go", "a", "b"), ("on", "b", "c")])
    wf.on_enter("b")(handler)
    wf.on_column("status", to="c")(lambda e: None)
    assert wf.unserved_states() == ("a",)
    wf.on_column("status", from_="b", to="a")(lambda e: None)
    assert wf.unserved_states() == ()  # some arrival in each state is served
    other = Workflow("wf", table="t", states=["a", "b"], initial="a",
                     transitions=[("go", "a", "b")])
    other.on_column("status", from_="a")(handler)
    assert other.unserved_states() == ()  # leaving a: any arrival may be served
