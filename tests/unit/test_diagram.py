from itertools import combinations

from orchestrator import Workflow
from orchestrator.demo.handlers.food_order import food_order
from orchestrator.web import diagram
from orchestrator.web.diagram import BOX_H, BOX_W
from tests.support.tickets import tickets


def test_the_happy_path_runs_along_the_top_row() -> None:
    d = diagram.layout(food_order)
    top = sorted((b for b in d.boxes.values() if b.y == diagram.MARGIN_TOP), key=lambda b: b.x)
    assert [b.state for b in top] == ["placed", "validated", "paid", "approved",
                                      "agent_assigned", "picked_up", "delivered"]
    assert {b.state for b in d.boxes.values()} == set(food_order.states)
    assert d.boxes["failed"].kind == "failure" and d.boxes["placed"].kind == "initial"


def test_no_two_states_overlap_and_all_fit() -> None:
    for wf in (food_order, tickets):
        d = diagram.layout(wf)
        for a, b in combinations(d.boxes.values(), 2):
            apart = abs(a.x - b.x) >= BOX_W or abs(a.y - b.y) >= BOX_H
            assert apart, (wf.name, a.state, b.state)
        assert all(b.x + BOX_W <= d.width and b.y + BOX_H <= d.height for b in d.boxes.values())


def test_every_transition_is_an_arrow_and_failure_moves_are_faint() -> None:
    d = diagram.layout(food_order)
    edges = {(m.source, m.dest) for m in food_order.machine.get_transitions()}
    assert {(a.source, a.dest) for a in d.arrows} == edges
    assert {(t.source, t.dest) for t in food_order.transitions} == edges
    assert {a.style for a in d.arrows if a.dest == "failed"} == {"failure"}
    assert [a.trigger for a in d.arrows if a.show_label].count("cancel") == 1


def test_names_are_escaped_in_the_svg() -> None:
    wf = Workflow("odd", table="t", states=["a<b", "c&d"], initial="a<b",
                  transitions=[("go", "a<b", "c&d")], terminal=["c&d"])
    svg = diagram.svg(wf)
    assert "a&lt;b" in svg and "c&amp;d" in svg and "a<b" not in svg
    assert svg.count('data-state="') == 2
