"""A workflow's state diagram as SVG, laid out from its definition (no JavaScript library, no
network: it must work offline).

The layout: the longest path from the initial state (the happy path) runs left to right on
one row; every other state sits on a second row under the states it is reached from. Moves
into the failure state, which every active state has, are drawn faint. Each state box carries
``data-state`` and empty slots for a live count and a "stuck" badge that the page fills in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from html import escape

from orchestrator.workflow import Transition, Workflow

BOX_W, BOX_H = 128, 56
GAP_X = 62
ROW_GAP = 96
MARGIN_X, MARGIN_TOP = 36, 34
MAX_PATHS = 20_000  # enough for any hand-written workflow; bounds the search on odd graphs


@dataclass(frozen=True, slots=True)
class Box:
    state: str
    x: float
    y: float
    kind: str  # initial, active, terminal or failure

    @property
    def cx(self) -> float:
        return self.x + BOX_W / 2


@dataclass(frozen=True, slots=True)
class Arrow:
    trigger: str
    source: str
    dest: str
    path: str
    label_x: float
    label_y: float
    style: str  # main, side or failure
    show_label: bool


@dataclass(frozen=True, slots=True)
class Diagram:
    boxes: dict[str, Box]
    arrows: list[Arrow]
    width: float
    height: float


def layout(wf: Workflow) -> Diagram:
    spine = _spine(wf)
    boxes = {s: Box(s, MARGIN_X + i * (BOX_W + GAP_X), MARGIN_TOP, _kind(wf, s))
             for i, s in enumerate(spine)}
    others = [s for s in wf.states if s not in boxes]
    for state, x in _spread(_wanted_x(wf, others, boxes)):
        boxes[state] = Box(state, x, MARGIN_TOP + BOX_H + ROW_GAP, _kind(wf, state))
    width = max(b.x for b in boxes.values()) + BOX_W + MARGIN_X
    height = max(b.y for b in boxes.values()) + BOX_H + 30
    return Diagram(boxes, list(_arrows(wf, boxes)), width, height)


def _kind(wf: Workflow, state: str) -> str:
    if state == wf.failure_state:
        return "failure"
    if state in wf.terminal:
        return "terminal"
    return "initial" if state == wf.initial else "active"


def _spine(wf: Workflow) -> list[str]:
    """The longest simple path from the initial state, not through the failure state."""
    moves: dict[str, list[str]] = {}
    for t in wf.transitions:
        if t.dest != wf.failure_state:
            moves.setdefault(t.source, []).append(t.dest)
    if wf.initial is None:
        return []
    best: list[str] = [wf.initial]
    budget = [MAX_PATHS]

    def walk(path: list[str]) -> None:
        nonlocal best
        budget[0] -= 1
        if len(path) > len(best):
            best = list(path)
        for dest in moves.get(path[-1], []):
            if dest not in path and budget[0] > 0:
                walk([*path, dest])

    walk(best)
    return best


def _wanted_x(wf: Workflow, states: list[str], placed: dict[str, Box]) -> list[tuple[str, float]]:
    """Where each off-path state would like to sit: under the path states it connects to."""
    wanted = []
    for i, state in enumerate(states):
        near = [placed[t.source].x for t in wf.transitions
                if t.dest == state and t.source in placed]
        near += [placed[t.dest].x for t in wf.transitions
                 if t.source == state and t.dest in placed]
        wanted.append((state, sum(near) / len(near) if near else MARGIN_X + i * BOX_W))
    return sorted(wanted, key=lambda item: item[1])


def _spread(wanted: list[tuple[str, float]]) -> Iterator[tuple[str, float]]:
    """Left to right, each box at its wanted place or just right of its neighbour."""
    next_free = float(MARGIN_X)
    for state, x in wanted:
        x = max(x, next_free)
        next_free = x + BOX_W + GAP_X
        yield state, x


def _arrows(wf: Workflow, boxes: dict[str, Box]) -> Iterator[Arrow]:
    labelled: set[tuple[str, str]] = set()
    into: dict[str, list[Transition]] = {}
    for t in wf.transitions:
        into.setdefault(t.dest, []).append(t)
    for t in wf.transitions:
        src, dst = boxes[t.source], boxes[t.dest]
        siblings = into[t.dest]
        slot = (siblings.index(t) + 1) / (len(siblings) + 1)
        path, lx, ly = _route(src, dst, slot)
        style = ("failure" if t.dest == wf.failure_state
                 else "main" if src.y == dst.y else "side")
        first = (t.trigger, t.dest) not in labelled
        labelled.add((t.trigger, t.dest))
        yield Arrow(t.trigger, t.source, t.dest, path, lx, ly, style,
                    show_label=first and style != "failure")


def _route(src: Box, dst: Box, slot: float) -> tuple[str, float, float]:
    """An SVG path from ``src`` to ``dst`` and where its label goes. ``slot`` (0..1) spreads
    the arrows arriving at one box along its edge."""
    if src.y == dst.y:
        if dst.x == src.x + BOX_W + GAP_X:  # neighbours on a row: a straight line
            y = src.y + BOX_H / 2
            x1, x2 = src.x + BOX_W, dst.x
            return f"M{x1},{y} L{x2 - 2},{y}", (x1 + x2) / 2, y - 7
        lift = -34 if src.y == MARGIN_TOP else BOX_H + 34  # arcs above the top row
        y1 = src.y if lift < 0 else src.y + BOX_H
        cy = src.y + lift
        return (f"M{src.cx},{y1} C{src.cx},{cy} {dst.cx},{cy} {dst.cx},{y1}",
                (src.cx + dst.cx) / 2, cy + (6 if lift < 0 else 12))
    down = dst.y > src.y
    x1 = src.cx
    x2 = dst.x + BOX_W * slot
    y1 = src.y + BOX_H if down else src.y
    y2 = dst.y if down else dst.y + BOX_H
    mid = (y1 + y2) / 2
    return (f"M{x1},{y1} C{x1},{mid} {x2},{mid} {x2},{y2 + (-2 if down else 2)}",
            x2, y2 + (-8 if down else 16))


def svg(wf: Workflow) -> str:
    """The diagram as an inline SVG element (text escaped); empty for a workflow without a
    state column."""
    if wf.initial is None:
        return ""
    d = layout(wf)
    marker = f"arrow-{escape(wf.name)}"  # ids are per page: one marker per diagram
    parts = [f'<svg class="diagram" viewBox="0 0 {d.width:.0f} {d.height:.0f}" '
             f'data-workflow="{escape(wf.name)}" role="img" '
             f'aria-label="state diagram of {escape(wf.name)}">',
             f'<defs><marker id="{marker}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/>'
             '</marker></defs>']
    start = d.boxes[wf.initial]
    parts.append(f'<circle class="start" cx="{start.x - 22}" cy="{start.y + BOX_H / 2}" r="6"/>'
                 f'<path class="edge main" d="M{start.x - 16},{start.y + BOX_H / 2} '
                 f'L{start.x - 2},{start.y + BOX_H / 2}" marker-end="url(#{marker})"/>')
    for a in d.arrows:
        parts.append(f'<path class="edge {a.style}" d="{a.path}" marker-end="url(#{marker})">'
                     f'<title>{escape(a.trigger)}: {escape(a.source)} → {escape(a.dest)}</title>'
                     '</path>')
    for a in d.arrows:
        if a.show_label:
            parts.append(f'<text class="trigger {a.style}" x="{a.label_x:.0f}" '
                         f'y="{a.label_y:.0f}">{escape(a.trigger)}</text>')
    for b in d.boxes.values():
        parts.append(_box(b))
    parts.append("</svg>")
    return "".join(parts)


def _box(b: Box) -> str:
    state = escape(b.state)
    return (f'<g class="state {b.kind}" data-state="{state}" tabindex="0">'
            f'<title>{state}: click to list its rows</title>'
            f'<rect x="{b.x}" y="{b.y}" width="{BOX_W}" height="{BOX_H}" rx="7"/>'
            f'<text class="name" x="{b.cx}" y="{b.y + 18}">{state.replace("_", " ")}</text>'
            f'<text class="count" x="{b.cx}" y="{b.y + 45}">·</text>'
            f'<g class="stuck" visibility="hidden"><rect x="{b.x + BOX_W - 40}" y="{b.y - 10}" '
            f'width="48" height="18" rx="9"/><text x="{b.x + BOX_W - 16}" y="{b.y + 3}"></text>'
            '</g></g>')
