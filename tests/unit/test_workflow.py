import ast
import inspect
from types import ModuleType
from typing import Any

import pytest
from transitions import Machine

from orchestrator import Event, Next, Workflow, registry, routing, workflow
from orchestrator.errors import (
    DefinitionError,
    HandlerModuleError,
    IllegalTransition,
    RegistrationError,
)
from orchestrator.registry import Registry, load_registry


def make(**changes: Any) -> Workflow:
    spec: dict[str, Any] = {
        "table": "orders", "states": ["a", "b", "c", "x", "dead"], "initial": "a",
        "terminal": ["c", "x", "dead"], "failure_state": "dead",
        "transitions": [{"trigger": "go", "source": "a", "dest": "b"},
                        ("finish", "b", "c"), ("cancel", "*", "x")],
    }
    return Workflow("wf", **(spec | changes))


def test_transitions_expand_wildcards_and_failure_state() -> None:
    wf = make()
    assert wf.allows("a", "b") and wf.allows("b", "c")
    assert wf.allows("a", "x") and wf.allows("b", "x")
    assert wf.allows("a", "dead") and wf.allows("b", "dead")
    assert not wf.allows("c", "dead")
    assert not wf.allows("a", "c")
    assert wf.allows(None, "a") and not wf.allows(None, "b")
    assert wf.trigger_target("b", "cancel") == "x"
    assert wf.trigger_target("c", "cancel") is None
    assert wf.schema == "public" and wf.table == "orders"


def test_the_machine_holds_the_graph_and_answers_the_queries() -> None:
    wf = make()
    assert list(wf.machine.states) == ["a", "b", "c", "x", "dead"]
    assert wf.machine.initial == "a"
    assert {n for n, s in wf.machine.states.items() if s.final} == {"c", "x", "dead"}
    assert wf.terminal == frozenset({"c", "x", "dead"})
    assert wf.sources("cancel") == ("a", "b") and wf.sources("fail") == ("a", "b")
    assert wf.sources("nope") == ()
    assert sorted(wf.machine.get_triggers("b")) == ["cancel", "fail", "finish"]
    assert ("cancel", "b", "x") in {(t.trigger, t.source, t.dest) for t in wf.transitions}


def test_a_workflow_from_a_transitions_machine() -> None:
    machine = Machine(states=["a", "b", {"name": "c", "final": True}, {"name": "x", "final": True},
                              {"name": "dead", "final": True}],
                      initial="a", transitions=[["go", "a", "b"], ["finish", "b", "c"],
                                                {"trigger": "cancel", "source": "*", "dest": "x"}])
    wf = Workflow.from_machine("wf", machine, table="orders", failure_state="dead")
    # The machine's "*" covers every state, final ones and x itself, and it has auto
    # transitions (to_a, ...): the workflow keeps none of these.
    assert wf.definition() == make().definition()
    assert not wf.allows("c", "x") and not wf.allows("x", "x")
    assert wf.trigger_target("a", "to_b") is None


def test_a_workflow_from_a_transitions_config() -> None:
    config = {"states": ["a", "b", "c", "x", "dead"], "initial": "a",
              "transitions": [{"trigger": "go", "source": "a", "dest": "b"},
                              ["finish", "b", "c"], ["cancel", "*", "x"]]}
    wf = Workflow.from_config("wf", config, table="orders", terminal=["c", "x", "dead"],
                              failure_state="dead")
    assert wf.definition() == make().definition()


@pytest.mark.parametrize("config,message", [
    ({"states": ["a", "b"], "initial": "a",
      "transitions": [{"trigger": "go", "source": "a", "dest": "b", "conditions": "ok"}]},
     "'go' 'a' -> 'b' has conditions"),
    ({"states": ["a", "b"], "transitions": [["go", "a", "b"]]}, "no initial state"),
    ({"initial": "a"}, "not a transitions config"),
])
def test_a_config_the_orchestrator_cannot_honour_is_refused(config: dict[str, Any],
                                                            message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        Workflow.from_config("wf", config, table="orders")


def test_check_raises_illegal_transition() -> None:
    with pytest.raises(IllegalTransition, match="does not allow 'a' -> 'c'"):
        make().check("a", "c")


@pytest.mark.parametrize("changes,message", [
    ({"initial": "zz"}, "initial state 'zz' unknown"),
    ({"terminal": ["nope"]}, "terminal"),
    ({"failure_state": "b"}, "failure state must be terminal"),
    ({"transitions": [("go", "a", "nowhere")]}, "unknown 'nowhere'"),
    ({"transitions": [("go", "c", "a")]}, "terminal 'c' cannot move on"),
    ({"transitions": [("go", "a", "b"), ("again", "a", "b")]}, "twice"),
    ({"states": ["a", "a"], "terminal": [], "failure_state": None, "transitions": []}, "twice"),
    ({"initial": "c"}, "initial state cannot be terminal"),
    ({"states": ["a", "*"], "terminal": [], "failure_state": None, "transitions": []},
     "'\\*' cannot name a state"),
    ({"transitions": [("state", "a", "b")]}, "trigger 'state'"),
])
def test_inconsistent_definitions_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        make(**changes)


def test_definition_is_plain_data() -> None:
    data = make().definition()
    assert data["table"] == "public.orders"
    assert ["go", "a", "b"] in data["transitions"]
    assert ["fail", "a", "dead"] in data["transitions"]


def test_registering_an_illegal_transition_fails_at_import_time() -> None:
    wf = make()
    with pytest.raises(RegistrationError, match="does not allow 'a' -> 'c'"):
        wf.on("a", "c")


def test_registering_twice_names_both_handlers() -> None:
    wf = make()

    @wf.on("a", "b")
    def first(event: Event) -> None: ...

    with pytest.raises(RegistrationError, match=r"already has handler .*first"):
        @wf.on("a", "b")
        def second(event: Event) -> None: ...


def test_registration_checks_states_columns_and_signature() -> None:
    wf = make(watch=["note"])
    with pytest.raises(RegistrationError, match="no state 'zz'"):
        wf.on_enter("zz")
    with pytest.raises(RegistrationError, match="does not watch column 'other'"):
        wf.on_change("other")
    with pytest.raises(RegistrationError, match="must take"):
        wf.on_change("note")(lambda: None)


def _event(old: str | None, new: str, column: str = "status") -> Event:
    from datetime import UTC, datetime
    return Event(1, "wf", "1", column, "UPDATE", old, new, {}, {"status": new}, 1,
                 datetime.now(UTC))


def test_routing_prefers_the_exact_transition() -> None:
    wf = make(watch=["note"])

    @wf.on("a", "b")
    def exact(event: Event) -> None: ...

    @wf.on_enter("b")
    def entering(event: Event) -> None: ...

    @wf.on_change("note")
    def noted(event: Event) -> None: ...

    registry = Registry([wf])
    assert registry.route(_event("a", "b")).fn is exact  # type: ignore[union-attr]
    assert registry.route(_event(None, "b")).fn is entering  # type: ignore[union-attr]
    assert registry.route(_event("x", "y", column="note")).fn is noted  # type: ignore[union-attr]
    assert registry.route(_event("b", "c")) is None


def test_handler_arity_decides_whether_it_gets_a_context() -> None:
    wf = make()

    @wf.on("a", "b")
    def with_ctx(event: Event, ctx: object) -> Next: return Next("b")

    spec = next(iter(wf.handlers))
    assert spec.takes_context


def test_two_workflows_with_one_name_are_refused() -> None:
    with pytest.raises(RegistrationError, match="two workflows are named 'wf'"):
        Registry([make(), make()])


def test_loading_a_missing_handler_module_is_one_clear_error() -> None:
    with pytest.raises(HandlerModuleError, match="cannot import handler module 'no_such_mod'"):
        load_registry("no_such_mod")


def test_loading_the_demos_handlers_package_finds_food_order() -> None:
    registry = load_registry("orchestrator.demo.handlers")
    assert "food_order" in registry.workflows


def test_imports_run_one_way_routing_then_workflow_then_registry() -> None:
    def imported(module: ModuleType) -> set[str]:
        tree = ast.parse(inspect.getsource(module))
        return {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}

    assert imported(routing) & {"orchestrator.workflow", "orchestrator.registry"} == set()
    assert "orchestrator.registry" not in imported(workflow)
    assert {"orchestrator.routing", "orchestrator.workflow"} <= imported(registry)


@pytest.mark.parametrize("name", ["", "w" * 31, "ordér", "a-b", "a b", "order\n", "²"])
def test_a_workflow_name_is_1_to_30_ascii_letters_digits_and_underscores(name: str) -> None:
    with pytest.raises(DefinitionError, match="must be 1 to 30 ASCII letters, digits and _"):
        Workflow(name, table="orders", states=["a", "b"], initial="a",
                 transitions=[("go", "a", "b")])


@pytest.mark.parametrize("changes", [
    {"table": "é" * 32}, {"table": "s" * 64 + ".orders"}, {"key": ""}, {"column": "x\0"},
    {"watch": ["n" * 64]},
])
def test_table_and_column_names_are_what_postgresql_keeps(changes: dict[str, Any]) -> None:
    with pytest.raises(DefinitionError, match="is not a PostgreSQL name"):
        make(**changes)
    assert make(table="é" * 31, key="k" * 63).table == "é" * 31  # 62 and 63 bytes


def test_trigger_names_fit_and_differ_whatever_the_lengths() -> None:
    from orchestrator.install import _trigger_specs, trigger_name

    wf = make(watch=["c" * 62 + "1", "c" * 62 + "2", "note"])
    names = [trigger_name(wf, suffix) for suffix, _ in _trigger_specs(wf, guarded=True)]
    assert len(set(names)) == len(names) == 7
    assert all(len(n.encode()) <= 63 for n in names)
    assert names[:4] == ["orchestrator_wf_guard_insert", "orchestrator_wf_guard_update",
                         "orchestrator_wf_capture_insert", "orchestrator_wf_capture_0_status"]
    long = Workflow("w" * 30, table="t", column="é" * 31, states=["a", "b"], initial="a",
                    transitions=[("go", "a", "b")])
    state, watched = (trigger_name(long, f"capture_{rank}_{long.column}") for rank in (0, 1))
    assert len(state.encode()) <= 63 and len(watched.encode()) <= 63
    assert state.startswith("orchestrator_" + "w" * 30 + "_capture_0_")
    assert state < watched  # cut and hashed, the state column's capture still fires first


def test_captures_of_many_columns_fire_in_the_order_the_columns_were_given() -> None:
    from orchestrator.install import _trigger_specs, trigger_name

    watched = [f"c{n}" for n in range(11)]
    wf = make(watch=watched)
    captures = [trigger_name(wf, suffix) for suffix, _ in _trigger_specs(wf, guarded=True)
                if suffix.startswith("capture_") and suffix != "capture_insert"]
    # PostgreSQL fires triggers of one timing in name order.
    assert [name.rsplit("_", 1)[1] for name in sorted(captures)] == ["status", *watched]
    assert captures[0] == "orchestrator_wf_capture_00_status"
