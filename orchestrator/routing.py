"""Which handler serves which change: routes, registered handlers and one workflow's table of them.

This module knows nothing of workflows. A Workflow checks a route against its states before it
asks its HandlerTable to register a function for it; the Registry asks each workflow's table for
the handler of an event.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import EllipsisType
from typing import Any, TypeVar

from orchestrator.errors import RegistrationError

F = TypeVar("F", bound=Callable[..., Any])

# The values a column route accepts on one side of a change, as the text the event log records
# for them (None for NULL); None accepts any value.
Values = tuple[str | None, ...] | None
# A value a column route names: compared with the column's value in the column's own type.
ColumnValue = bool | int | str | None
# What on_column accepts for either side of a change: a value, a list of them, or ... for any.
ValueCondition = ColumnValue | Sequence[ColumnValue] | EllipsisType


@dataclass(frozen=True, slots=True)
class Change:
    """The value conditions of a column route: the old and the new values it serves (a change
    is always from one value to a different one; a new row's columns change from NULL)."""

    old: Values = None
    new: Values = None

    def matches(self, old: str | None, new: str | None) -> bool:
        return ((self.old is None or old in self.old)
                and (self.new is None or new in self.new))

    def overlaps(self, other: Change) -> bool:
        """Whether some change would match both."""
        return all(a is None or b is None or bool(set(a) & set(b))
                   for a, b in ((self.old, other.old), (self.new, other.new)))

    @property
    def key(self) -> str:
        return f"{_text(self.old)}=>{_text(self.new)}"


def _text(values: Values) -> str:
    if values is None:
        return "*"
    return json.dumps(sorted(values, key=lambda v: (v is not None, v or "")))


def values_of(workflow: str, condition: ValueCondition) -> Values:
    """The text forms of a value condition (None for any value, see Change). Raises
    RegistrationError for a value that is not None, a bool, an int or a str."""
    if condition is ...:
        return None
    given = (list(condition) if isinstance(condition, Sequence) and not isinstance(condition, str)
             else [condition])
    texts: list[str | None] = []
    for value in given:
        if value is None or isinstance(value, str):
            texts.append(value)
        elif isinstance(value, bool):
            texts.append("true" if value else "false")
        elif isinstance(value, int):
            texts.append(str(value))
        else:
            raise RegistrationError(f"workflow {workflow!r}: a column route compares None, "
                                    f"bools, ints and strs, not {type(value).__name__}")
    if not texts:
        raise RegistrationError(f"workflow {workflow!r}: an empty list of values matches no "
                                "change; use ... for any value")
    return tuple(dict.fromkeys(texts))


@dataclass(frozen=True, slots=True)
class Route:
    """Which changes a handler serves: a column, and a source/dest (None with any_source: any);
    or, with ``change``, the column's changes between the values it names."""

    column: str
    source: str | None
    dest: str | None
    any_source: bool = False
    change: Change | None = None

    @property
    def key(self) -> str:
        """A stable text form, stored with the workflow's definition."""
        if self.change is not None:
            return f"{self.column}:{self.change.key}"
        source = "*" if self.any_source else self.source
        return f"{self.column}:{source}->{self.dest or '*'}"

    def __str__(self) -> str:
        if self.change is not None:
            return f"change of {self.column} {self.change.key}"
        if self.dest is None:
            return f"change of {self.column}"
        if self.any_source:
            return f"entering {self.dest!r}"
        return f"{self.source!r} -> {self.dest!r}"


@dataclass(frozen=True, slots=True)
class Limit:
    """The most runs of a handler at once (``max_running``) and per second (``per_s``) across
    every dispatcher of a database; None: no bound of that kind. Handlers that give the same
    ``name`` share one limit (default: the handler's own qualified name, so one function
    registered for several routes shares it). Events over the limit wait their turn in the
    queue without using an attempt."""

    max_running: int | None = None
    per_s: float | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.max_running is None and self.per_s is None:
            raise RegistrationError("a Limit needs max_running, per_s or both")
        if self.max_running is not None and (
                isinstance(self.max_running, bool) or not isinstance(self.max_running, int)
                or self.max_running < 1):
            raise RegistrationError(f"Limit max_running must be a whole number at least 1, "
                                    f"not {self.max_running!r}")
        if self.per_s is not None and not (isinstance(self.per_s, int | float)
                                           and 0 < self.per_s < float("inf")):
            raise RegistrationError(f"Limit per_s must be a positive number, not {self.per_s!r}")
        if self.name is not None and not (isinstance(self.name, str) and self.name):
            raise RegistrationError(f"Limit name must be a non-empty string, not {self.name!r}")

    def named(self, default: str) -> Limit:
        """This limit with its name set (``default`` when none was given)."""
        return self if self.name else Limit(self.max_running, self.per_s, default)

    def as_list(self) -> list[Any]:
        """The stored form: ``[max_running, per_s]``."""
        return [self.max_running, self.per_s]


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A registered handler and its per-handler limits (None: use the settings' defaults)."""

    fn: Callable[..., Any]
    name: str
    workflow: str
    route: Route
    takes_context: bool
    max_attempts: int | None = None
    timeout_s: float | None = None
    is_async: bool = False  #: ``async def`` (or an object with one as ``__call__``)
    limit: Limit | None = None  #: fleet-wide bound, named


class HandlerTable:
    """The handlers of one workflow (named ``workflow``), keyed by route; one per route."""

    def __init__(self, workflow: str) -> None:
        self._workflow = workflow
        self._by_route: dict[Route, HandlerSpec] = {}

    def decorator(
        self, route: Route, *, max_attempts: int | None = None, timeout_s: float | None = None,
        limit: Limit | None = None,
    ) -> Callable[[F], F]:
        """A decorator that registers its function for ``route`` (checked by the caller).
        Raises RegistrationError for a function of the wrong arity or a route taken, or a
        ``limit`` that is not a Limit."""
        if limit is not None and not isinstance(limit, Limit):
            raise RegistrationError(f"limit must be a Limit(...), not {limit!r:.80}")

        def register(fn: F) -> F:
            name = f"{fn.__module__}.{fn.__qualname__}"
            self.add(HandlerSpec(
                fn=fn, name=name, workflow=self._workflow,
                route=route, takes_context=_takes_context(fn), max_attempts=max_attempts,
                timeout_s=timeout_s, is_async=is_async(fn),
                limit=limit.named(name) if limit else None,
            ))
            return fn

        return register

    def add(self, spec: HandlerSpec) -> None:
        """Register ``spec``. Raises RegistrationError when its route already has a handler."""
        other = self._by_route.get(spec.route) or next(
            (s for s in self._by_route.values() if _overlap(s.route, spec.route)), None)
        if other is not None:
            raise RegistrationError(
                f"workflow {self._workflow!r}: {spec.route} already has handler "
                f"{other.name}; cannot also register {spec.name}"
            )
        self._by_route[spec.route] = spec

    def find(self, column: str, source: str | None, dest: str | None) -> HandlerSpec | None:
        """The handler for a change: exact transition first, then entering dest, then the
        column route whose values match (no two overlap), then any change of the column."""
        table = self._by_route
        return (table.get(Route(column, source, dest))
                or table.get(Route(column, None, dest, any_source=True))
                or next((s for r, s in table.items() if r.column == column
                         and r.change is not None and r.change.matches(source, dest)), None)
                or table.get(Route(column, None, None, any_source=True)))

    def column_routes(self, column: str) -> list[Route]:
        """The routes of ``column`` that have value conditions (see Change)."""
        return [r for r in self._by_route if r.column == column and r.change is not None]

    def __iter__(self) -> Iterator[HandlerSpec]:
        return iter(self._by_route.values())


def _overlap(a: Route, b: Route) -> bool:
    """Whether two column routes of one column would both serve some change."""
    return (a.column == b.column and a.change is not None and b.change is not None
            and a.change.overlaps(b.change))


def is_async(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` gives a coroutine: an ``async def`` function, or an object
    whose ``__call__`` is one (a Remote)."""
    return inspect.iscoroutinefunction(fn if inspect.isroutine(fn) else type(fn).__call__)


def _takes_context(fn: Callable[..., Any]) -> bool:
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    if len(params) not in (1, 2):
        raise RegistrationError(
            f"handler {fn.__qualname__} must take (event) or (event, ctx), not {len(params)} "
            "positional parameters"
        )
    return len(params) == 2
