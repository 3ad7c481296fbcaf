"""A workflow: a table, its key, its state column, the states and the legal transitions.

States and transitions are data, checked when the Workflow is built and then held by a
``transitions`` Machine, which answers every question about the graph: which moves are legal,
where a trigger leads, the edges a diagram draws. A workflow can also be declared from an
existing Machine or its config dict. Handlers attach with ``@workflow.on(...)``.

A lifecycle kept in several columns needs no state column: ``column=None`` and no states, and
handlers attach to the watched columns' changes with ``@workflow.on_column(...)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from transitions import Machine
from transitions import Transition as TransitionsMove

from orchestrator.errors import DefinitionError, IllegalTransition, RegistrationError
from orchestrator.names import MAX_IDENTIFIER_BYTES, is_postgres_name
from orchestrator.related import Related, checked
from orchestrator.routing import Change, HandlerTable, Route, ValueCondition, values_of

F = TypeVar("F", bound=Callable[..., Any])
FAIL_TRIGGER = "fail"


@dataclass(frozen=True, slots=True)
class Transition:
    """A legal move of the state column, named by its trigger (e.g. ``cancel``)."""

    trigger: str
    source: str
    dest: str


@dataclass(frozen=True, slots=True)
class Deadline:
    """A row still in ``state`` ``after_s`` seconds after entering it moves to ``to``.

    Durable (a timer event in the database, surviving restarts), fired at most once, and
    cancelled when the row leaves the state first. ``to`` must be a legal move from ``state``;
    handlers of that transition run as for any other change.
    """

    state: str
    after_s: float
    to: str


TransitionSpec = Mapping[str, Any] | Sequence[Any]
# A workflow's name: ASCII letters, digits and _, at most 30 bytes, so that its triggers' names
# fit PostgreSQL's 63 bytes ("orchestrator_<name>_capture_insert") or, cut for a long column
# name, still sort the state column's capture first ("orchestrator_<name>_capture_0...").
WORKFLOW_NAME = re.compile(r"[A-Za-z0-9_]{1,30}")
# Not state names: the empty name, and the wildcards of transitions ("*": every state, "=": the
# source itself).
RESERVED_STATE_NAMES = ("", "*", "=")


class Workflow:
    """The lifecycle of the rows of one table. Raises DefinitionError when inconsistent.

    ``transitions`` takes the ``transitions`` library's shape: dicts with ``trigger``, ``source``
    (a state, a list of states, or ``"*"`` for every non-terminal state) and ``dest``; or
    ``(trigger, source, dest)`` tuples. With a ``failure_state``, every non-terminal state may also
    move there (trigger ``fail``): that is where rows go whose handler exhausted its attempts.
    ``watch`` names further columns whose changes are recorded as events. ``related`` names
    data read with each event (``orchestrator.related``), given to handlers as ``event.related``.
    ``column=None`` (with no states, initial state or transitions): no state column and no
    guard; the rows are driven by routes on the watched columns alone (``on_column``).

    The graph is held by ``machine``, a ``transitions.Machine`` without a model: its states
    (terminal ones marked ``final``), its initial state and one event per trigger. ``states``,
    ``initial``, ``terminal``, ``transitions`` and the legality checks all read it; it is not
    to be changed after the Workflow is built.
    """

    def __init__(
        self,
        name: str,
        *,
        table: str,
        states: Sequence[str] = (),
        initial: str | None = None,
        transitions: Iterable[TransitionSpec] = (),
        terminal: Iterable[str] = (),
        failure_state: str | None = None,
        key: str = "id",
        column: str | None = "status",
        watch: Iterable[str] = (),
        deadlines: Iterable[Deadline] = (),
        related: Mapping[str, Related] | None = None,
    ) -> None:
        self.name = name
        self.schema, _, self.table = table.rpartition(".")
        self.schema = self.schema or "public"
        self.key = key
        self.column = column
        self.failure_state = failure_state
        self.watch: tuple[str, ...] = tuple(dict.fromkeys(c for c in watch if c != column))
        _check_names(name, [("schema", self.schema), ("table", self.table), ("key", key),
                            *([("column", column)] if column is not None else []),
                            *(("watched column", c) for c in self.watch)])
        ends = frozenset(terminal)
        transitions, deadlines = list(transitions), list(deadlines)
        if column is None:
            _check_stateless(name, states, initial, transitions, failure_state, deadlines,
                             self.watch)
        elif initial is None:
            raise DefinitionError(f"workflow {name!r}: a state column needs an initial state")
        _check_states(name, tuple(states), initial, ends, failure_state)
        self.machine = Machine(
            model=None, states=[{"name": s, "final": s in ends} for s in states],
            initial=initial, auto_transitions=False)
        self._add_transitions(transitions)
        self.deadlines = _checked_deadlines(self, deadlines)
        self.related = checked(name, related or {})
        self.handlers = HandlerTable(self.name)

    @classmethod
    def from_machine(cls, name: str, machine: Machine, *, table: str,
                     terminal: Iterable[str] | None = None, **options: Any) -> Workflow:
        """A workflow over the states, initial state and transitions of a ``transitions``
        Machine; ``options`` are Workflow's other keywords (``failure_state``, ``key``, ...).

        ``terminal`` defaults to the machine's ``final`` states. Left out: auto transitions
        (``to_<state>``), moves out of a terminal state and moves that keep the state (a
        ``"*"`` source gives both in transitions), and internal transitions. Callbacks are
        not run: handlers are. Raises DefinitionError for a transition with conditions, which
        the orchestrator cannot evaluate, and as Workflow() does.
        """
        if machine.initial is None:
            raise DefinitionError(f"workflow {name!r}: the machine has no initial state")
        ends = (frozenset(terminal) if terminal is not None
                else frozenset(n for n, state in machine.states.items() if state.final))
        moves = [(trigger, move.source, move.dest) for trigger, move in _moves(machine)
                 if move.source not in ends and move.dest not in (None, move.source)]
        return cls(name, table=table, states=list(machine.states), initial=machine.initial,
                   terminal=ends, transitions=moves, **options)

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any], *, table: str,
                    terminal: Iterable[str] | None = None, **options: Any) -> Workflow:
        """A workflow from a ``transitions`` configuration (a ``MachineConfig`` dict: ``states``,
        ``initial``, ``transitions``; its other keys are callbacks and options for running a
        machine, which the orchestrator does not). As from_machine, whose rules it follows."""
        try:
            machine = Machine(model=None, states=config["states"],
                              initial=config.get("initial"), auto_transitions=False,
                              transitions=config.get("transitions", []))
        except (KeyError, TypeError, ValueError) as exc:
            raise DefinitionError(f"workflow {name!r}: not a transitions config: {exc}") from exc
        return cls.from_machine(name, machine, table=table, terminal=terminal, **options)

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def states(self) -> tuple[str, ...]:
        return tuple(self.machine.states)

    @property
    def initial(self) -> str | None:
        """The state of a new row; None without a state column."""
        return None if self.machine.initial is None else str(self.machine.initial)

    @property
    def terminal(self) -> frozenset[str]:
        return frozenset(n for n, state in self.machine.states.items() if state.final)

    @property
    def transitions(self) -> tuple[Transition, ...]:
        """Every legal move, grouped by trigger in the order the triggers were first given."""
        return tuple(Transition(trigger, move.source, str(move.dest))
                     for trigger, move in _moves(self.machine))

    def _add_transitions(self, specs: Iterable[TransitionSpec]) -> None:
        """Add each move to the machine, a ``"*"`` source expanded to the non-terminal states
        (transitions' own ``"*"`` would include terminal ones); then the moves to the failure
        state that no trigger already gives."""
        active = [s for s in self.states if s not in self.terminal]
        for spec in specs:
            if isinstance(spec, Mapping):
                trigger, source, dest = spec["trigger"], spec["source"], spec["dest"]
            else:
                trigger, source, dest = spec
            sources = active if source == "*" else [source] if isinstance(source, str) else source
            for src in sources:
                self._check_move(src, dest)
                self._add_move(trigger, src, dest)
        if self.failure_state:
            for src in active:
                if not self.allows(src, self.failure_state):
                    self._add_move(FAIL_TRIGGER, src, self.failure_state)

    def _add_move(self, trigger: str, src: str, dest: str) -> None:
        try:
            self.machine.add_transition(trigger, src, dest)
        except ValueError as exc:  # e.g. a trigger named like the model attribute, "state"
            raise DefinitionError(f"workflow {self.name!r}: trigger {trigger!r}: {exc}") from exc

    def _check_move(self, src: str, dest: str) -> None:
        for state in (src, dest):
            if state not in self.machine.states:
                raise DefinitionError(f"workflow {self.name!r}: transition names unknown {state!r}")
        if self.machine.states[src].final:
            raise DefinitionError(f"workflow {self.name!r}: terminal {src!r} cannot move on")
        if self.allows(src, dest):
            raise DefinitionError(f"workflow {self.name!r}: {src!r} -> {dest!r} twice")

    # -- queries (each answered by the machine) ------------------------------------------------

    def allows(self, source: str | None, dest: str) -> bool:
        """Whether a row may move from ``source`` to ``dest`` (None: a new row in ``dest``)."""
        if source is None:
            return dest == self.initial
        return any(move.dest == dest for trigger in self.machine.get_triggers(source)
                   for move in self.machine.events[trigger].transitions[source])

    def check(self, source: str | None, dest: str) -> None:
        """Raise IllegalTransition unless ``allows(source, dest)``."""
        if not self.allows(source, dest):
            raise IllegalTransition(self.name, source, dest)

    def trigger_target(self, source: str, trigger: str) -> str | None:
        """Where ``trigger`` leads from ``source``, or None if it does not apply there."""
        event = self.machine.events.get(trigger)
        moves = event.transitions.get(source, []) if event is not None else []
        return str(moves[0].dest) if moves else None

    def sources(self, trigger: str) -> tuple[str, ...]:
        """The states ``trigger`` applies in (none for a name that is not a trigger)."""
        event = self.machine.events.get(trigger)
        return tuple(s for s, moves in event.transitions.items() if moves) if event else ()

    def unserved_states(self) -> tuple[str, ...]:
        """States whose arrival (on the state column) no handler serves: none of on_enter, on
        into it, on_change of the state column. The capture trigger records those arrivals
        finished. A workflow without any handler (rebuilt from its definition) has none."""
        routes = [spec.route for spec in self.handlers if spec.route.column == self.column]
        if not routes or any(r.dest is None and (r.change is None or r.change.new is None)
                             for r in routes):
            return ()
        served = {r.dest for r in routes} | {
            v for r in routes if r.change is not None for v in r.change.new or ()}
        return tuple(s for s in self.states if s not in served)

    def definition(self) -> dict[str, Any]:
        """The workflow and its handler routes as plain data: stored by `migrate`, compared by
        every dispatcher, so dispatchers never serve one workflow with different handlers."""
        return {
            "name": self.name, "table": self.qualified_table, "key": self.key,
            "column": self.column, "states": list(self.states), "initial": self.initial,
            "terminal": sorted(self.terminal), "failure_state": self.failure_state,
            "watch": list(self.watch),
            "transitions": [[t.trigger, t.source, t.dest] for t in self.transitions],
            "deadlines": [[d.state, d.after_s, d.to] for d in self.deadlines],
            "handlers": {spec.route.key: spec.name
                         for spec in sorted(self.handlers, key=lambda s: s.route.key)},
            **_limits_definition(self.handlers),
        } | ({"related": {n: r.definition() for n, r in self.related.items()}}
             if self.related else {})

    @classmethod
    def from_definition(cls, data: Mapping[str, Any]) -> Workflow:
        """Rebuild a Workflow (without handlers) from ``definition()``'s output."""
        return cls(
            data["name"], table=data["table"], key=data["key"], column=data["column"],
            states=data["states"], initial=data["initial"], terminal=data["terminal"],
            failure_state=data["failure_state"], watch=data["watch"],
            transitions=[tuple(t) for t in data["transitions"]
                         if not (t[0] == FAIL_TRIGGER and t[2] == data["failure_state"])],
            deadlines=[Deadline(*d) for d in data.get("deadlines", [])],
            related={n: Related.from_definition(d) for n, d in data.get("related", {}).items()},
        )

    # -- handler registration ----------------------------------------------------------------

    def on(self, source: str, dest: str, **options: Any) -> Callable[[F], F]:
        """Register the decorated function for the transition ``source -> dest``.

        Options: ``max_attempts``, ``timeout_s``, ``limit`` (a fleet-wide ``Limit``). Raises
        RegistrationError at import time for a transition the workflow does not allow or one
        that already has a handler.
        """
        return self._register(Route(self._state_column(), source, dest), options)

    def on_enter(self, state: str, **options: Any) -> Callable[[F], F]:
        """Register for every arrival in ``state`` (including a new row when it is the initial
        state); a handler registered with ``on`` for a specific transition takes precedence."""
        return self._register(Route(self._state_column(), None, state, any_source=True),
                              options)

    def _state_column(self) -> str:
        if self.column is None:
            raise RegistrationError(f"workflow {self.name!r} has no state column: register "
                                    "handlers with on_column() or on_change()")
        return self.column

    def on_change(self, column: str, **options: Any) -> Callable[[F], F]:
        """Register for every change of a watched column (one of ``watch``) by an UPDATE."""
        return self._register(Route(column, None, None, any_source=True), options)

    def on_column(self, column: str, *, from_: ValueCondition = ...,
                  to: ValueCondition = ..., **options: Any) -> Callable[[F], F]:
        """Register for the changes of ``column`` (a watched column, or the state column) from
        a value in ``from_`` to a value in ``to``: each a value, a list of values, or ``...``
        for any. A value is None (NULL), a bool, an int or a str, compared in the column's own
        type (a str as the column's text form). A new row counts as a change from NULL.

        The conditions go into the capture trigger: a change no route of the column serves is
        not recorded at all (unless the column also has an ``on_change`` handler). Raises
        RegistrationError for a column not watched, a value of another type, or conditions
        that overlap another column route of the same column.
        """
        change = Change(values_of(self.name, from_), values_of(self.name, to))
        return self._register(Route(column, None, None, any_source=True, change=change),
                              options)

    def _register(self, route: Route, options: dict[str, Any]) -> Callable[[F], F]:
        where = f"workflow {self.name!r}"
        if route.change is not None:
            if route.column not in (self.column, *self.watch):
                raise RegistrationError(f"{where} does not watch column {route.column!r}")
        elif route.column == self.column:
            if route.dest is None:
                raise RegistrationError(f"{where}: use on()/on_enter() for the state column")
            if route.dest not in self.states:
                raise RegistrationError(f"{where} has no state {route.dest!r}")
            if not route.any_source and not self.allows(route.source, route.dest):
                raise RegistrationError(
                    f"{where} does not allow {route.source!r} -> {route.dest!r}; "
                    "add the transition to the workflow or fix the handler's route"
                )
        elif route.column not in self.watch:
            raise RegistrationError(f"{where} does not watch column {route.column!r}")
        return self.handlers.decorator(route, **options)

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, table={self.qualified_table!r})"


def _checked_deadlines(wf: Workflow, deadlines: Iterable[Deadline]) -> tuple[Deadline, ...]:
    """``deadlines``, one per state. Raises DefinitionError for a state given twice, a time
    that is not positive or a move ``wf`` does not allow."""
    by_state: dict[str, Deadline] = {}
    for d in deadlines:
        where = f"workflow {wf.name!r}: deadline of {d.state!r}"
        if d.state in by_state:
            raise DefinitionError(f"{where} given twice")
        if d.after_s <= 0:
            raise DefinitionError(f"{where} must be after a positive time")
        if not wf.allows(d.state, d.to):
            raise DefinitionError(f"{where}: {d.state!r} -> {d.to!r} is not a transition")
        by_state[d.state] = d
    return tuple(by_state.values())


def _limits_definition(handlers: HandlerTable) -> dict[str, Any]:
    """``{"limits": {route: [name, max_running, per_s]}}`` when a handler has a Limit (absent
    otherwise, so a workflow without limits keeps the definition it had)."""
    limits = {spec.route.key: [spec.limit.name, *spec.limit.as_list()]
              for spec in sorted(handlers, key=lambda s: s.route.key) if spec.limit}
    return {"limits": limits} if limits else {}


def _check_names(name: str, identifiers: Iterable[tuple[str, str]]) -> None:
    """Raise DefinitionError for a workflow name that is not 1 to 30 ASCII letters, digits or
    _, or a table, schema or column name PostgreSQL would not keep as given (empty, longer
    than 63 bytes, or holding a zero byte)."""
    if not WORKFLOW_NAME.fullmatch(name):
        raise DefinitionError(f"workflow name {name!r} must be 1 to 30 ASCII letters, digits "
                              "and _")
    for what, identifier in identifiers:
        if not is_postgres_name(identifier):
            size = len(identifier.encode())
            raise DefinitionError(
                f"workflow {name!r}: {what} {identifier!r} is not a PostgreSQL name (1 to "
                f"{MAX_IDENTIFIER_BYTES} bytes, no zero byte; this one has {size})")


def _check_stateless(name: str, states: Sequence[str], initial: str | None,
                     transitions: Sequence[Any], failure_state: str | None,
                     deadlines: Iterable[Deadline], watch: Sequence[str]) -> None:
    """Raise DefinitionError unless a workflow without a state column has no states, initial
    state, transitions, failure state or deadlines, and watches at least one column."""
    given = [what for what, value in [
        ("states", states), ("an initial state", initial), ("transitions", transitions),
        ("a failure state", failure_state), ("deadlines", list(deadlines))] if value]
    if given:
        raise DefinitionError(f"workflow {name!r} has no state column (column=None), so it "
                              f"cannot have {given[0]}")
    if not watch:
        raise DefinitionError(f"workflow {name!r} has no state column and watches no column")


def _check_states(name: str, states: tuple[str, ...], initial: str | None,
                  terminal: frozenset[str], failure_state: str | None) -> None:
    """Raise DefinitionError unless the states are consistent (before the machine is built)."""
    where = f"workflow {name!r}"
    if len(set(states)) != len(states):
        raise DefinitionError(f"{where} lists a state twice")
    if reserved := [s for s in states if s in RESERVED_STATE_NAMES]:
        raise DefinitionError(f"{where}: {reserved[0]!r} cannot name a state")
    for what, state in [("initial", initial), ("failure", failure_state)]:
        if state is not None and state not in states:
            raise DefinitionError(f"{where}: {what} state {state!r} unknown")
    if unknown := terminal - set(states):
        raise DefinitionError(f"{where}: terminal {sorted(unknown)} unknown")
    if failure_state and failure_state not in terminal:
        raise DefinitionError(f"{where}: failure state must be terminal")
    if initial in terminal:
        raise DefinitionError(f"{where}: initial state cannot be terminal")


def _moves(machine: Machine) -> Iterator[tuple[str, TransitionsMove]]:
    """Each trigger's moves in ``machine``, without its auto transitions (``to_<state>``).
    Raises DefinitionError for a move with conditions."""
    prefix = "to_" if machine.model_attribute == "state" else f"to_{machine.model_attribute}_"
    auto = {prefix + s for s in machine.states} if machine.auto_transitions else set()
    for trigger, event in machine.events.items():
        if trigger in auto:
            continue
        for moves in event.transitions.values():
            for move in moves:
                if move.conditions:
                    raise DefinitionError(
                        f"transition {trigger!r} {move.source!r} -> {move.dest!r} has conditions, "
                        "which the orchestrator cannot evaluate: make them handlers' decisions")
                yield trigger, move
