"""A workflow: a table, its key, its state column, the states and the legal transitions.

States and transitions are data, checked when the Workflow is built; the ``transitions`` library
holds the graph (for queries and diagrams). Handlers attach with ``@workflow.on(...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from transitions import Machine

from orchestrator.errors import DefinitionError, IllegalTransition, RegistrationError
from orchestrator.routing import HandlerTable, Route

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


class Workflow:
    """The lifecycle of the rows of one table. Raises DefinitionError when inconsistent.

    ``transitions`` takes the ``transitions`` library's shape: dicts with ``trigger``, ``source``
    (a state, a list of states, or ``"*"`` for every non-terminal state) and ``dest``; or
    ``(trigger, source, dest)`` tuples. With a ``failure_state``, every non-terminal state may also
    move there (trigger ``fail``): that is where rows go whose handler exhausted its attempts.
    ``watch`` names further columns whose changes are recorded as events.
    """

    def __init__(
        self,
        name: str,
        *,
        table: str,
        states: Sequence[str],
        initial: str,
        transitions: Iterable[TransitionSpec],
        terminal: Iterable[str] = (),
        failure_state: str | None = None,
        key: str = "id",
        column: str = "status",
        watch: Iterable[str] = (),
        deadlines: Iterable[Deadline] = (),
    ) -> None:
        self.name = name
        self.schema, _, self.table = table.rpartition(".")
        self.schema = self.schema or "public"
        self.key = key
        self.column = column
        self.states: tuple[str, ...] = tuple(states)
        self.initial = initial
        self.terminal = frozenset(terminal)
        self.failure_state = failure_state
        self.watch: tuple[str, ...] = tuple(dict.fromkeys(c for c in watch if c != column))
        self._check_states()
        self.transitions = self._expand(transitions)
        self._legal = frozenset((t.source, t.dest) for t in self.transitions)
        self.deadlines = self._check_deadlines(deadlines)
        self.machine = Machine(
            model=None, states=list(self.states), initial=initial, auto_transitions=False,
            transitions=[{"trigger": t.trigger, "source": t.source, "dest": t.dest}
                         for t in self.transitions],
        )
        self.handlers = HandlerTable(self.name)

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}"

    def _check_states(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise DefinitionError(f"workflow name {self.name!r} must be letters, digits and _")
        if len(set(self.states)) != len(self.states):
            raise DefinitionError(f"workflow {self.name!r} lists a state twice")
        for what, state in [("initial", self.initial), ("failure", self.failure_state)]:
            if state is not None and state not in self.states:
                raise DefinitionError(f"workflow {self.name!r}: {what} state {state!r} unknown")
        if unknown := self.terminal - set(self.states):
            raise DefinitionError(f"workflow {self.name!r}: terminal {sorted(unknown)} unknown")
        if self.failure_state and self.failure_state not in self.terminal:
            raise DefinitionError(f"workflow {self.name!r}: failure state must be terminal")
        if self.initial in self.terminal:
            raise DefinitionError(f"workflow {self.name!r}: initial state cannot be terminal")

    def _expand(self, specs: Iterable[TransitionSpec]) -> tuple[Transition, ...]:
        out: dict[tuple[str, str], Transition] = {}
        active = [s for s in self.states if s not in self.terminal]
        for spec in specs:
            if isinstance(spec, Mapping):
                trigger, source, dest = spec["trigger"], spec["source"], spec["dest"]
            else:
                trigger, source, dest = spec
            sources = active if source == "*" else [source] if isinstance(source, str) else source
            for src in sources:
                self._check_move(src, dest)
                if (src, dest) in out:
                    raise DefinitionError(f"workflow {self.name!r}: {src!r} -> {dest!r} twice")
                out[(src, dest)] = Transition(trigger, src, dest)
        if self.failure_state:
            for src in active:
                out.setdefault((src, self.failure_state),
                               Transition(FAIL_TRIGGER, src, self.failure_state))
        return tuple(out.values())

    def _check_deadlines(self, deadlines: Iterable[Deadline]) -> tuple[Deadline, ...]:
        by_state: dict[str, Deadline] = {}
        for d in deadlines:
            where = f"workflow {self.name!r}: deadline of {d.state!r}"
            if d.state in by_state:
                raise DefinitionError(f"{where} given twice")
            if d.after_s <= 0:
                raise DefinitionError(f"{where} must be after a positive time")
            if not self.allows(d.state, d.to):
                raise DefinitionError(f"{where}: {d.state!r} -> {d.to!r} is not a transition")
            by_state[d.state] = d
        return tuple(by_state.values())

    def _check_move(self, src: str, dest: str) -> None:
        for state in (src, dest):
            if state not in self.states:
                raise DefinitionError(f"workflow {self.name!r}: transition names unknown {state!r}")
        if src in self.terminal:
            raise DefinitionError(f"workflow {self.name!r}: terminal {src!r} cannot move on")

    # -- queries ---------------------------------------------------------------------------

    def allows(self, source: str | None, dest: str) -> bool:
        """Whether a row may move from ``source`` to ``dest`` (None: a new row in ``dest``)."""
        if source is None:
            return dest == self.initial
        return (source, dest) in self._legal

    def check(self, source: str | None, dest: str) -> None:
        """Raise IllegalTransition unless ``allows(source, dest)``."""
        if not self.allows(source, dest):
            raise IllegalTransition(self.name, source, dest)

    def trigger_target(self, source: str, trigger: str) -> str | None:
        """Where ``trigger`` leads from ``source``, or None if it does not apply there."""
        for t in self.transitions:
            if t.source == source and t.trigger == trigger:
                return t.dest
        return None

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
        }

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
        )

    # -- handler registration ----------------------------------------------------------------

    def on(self, source: str, dest: str, **options: Any) -> Callable[[F], F]:
        """Register the decorated function for the transition ``source -> dest``.

        Options: ``max_attempts``, ``timeout_s``. Raises RegistrationError at import time for a
        transition the workflow does not allow or one that already has a handler.
        """
        return self._register(Route(self.column, source, dest), options)

    def on_enter(self, state: str, **options: Any) -> Callable[[F], F]:
        """Register for every arrival in ``state`` (including a new row when it is the initial
        state); a handler registered with ``on`` for a specific transition takes precedence."""
        return self._register(Route(self.column, None, state, any_source=True), options)

    def on_change(self, column: str, **options: Any) -> Callable[[F], F]:
        """Register for every change of a watched column (one of ``watch``)."""
        return self._register(Route(column, None, None, any_source=True), options)

    def _register(self, route: Route, options: dict[str, Any]) -> Callable[[F], F]:
        where = f"workflow {self.name!r}"
        if route.column == self.column:
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
