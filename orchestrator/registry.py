"""Handlers registered per transition, and the registry that routes an event to one.

Registration happens at import time of the handler modules and refuses illegal or duplicate
routes, so a dispatcher never starts with a handler set it cannot honour.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.errors import HandlerModuleError, OrchestratorError, RegistrationError

if TYPE_CHECKING:
    from orchestrator.events import Event
    from orchestrator.workflow import Workflow

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Route:
    """Which changes a handler serves: a column, and a source/dest (None with any_source: any)."""

    column: str
    source: str | None
    dest: str | None
    any_source: bool = False

    @property
    def key(self) -> str:
        """A stable text form, stored with the workflow's definition."""
        source = "*" if self.any_source else self.source
        return f"{self.column}:{source}->{self.dest or '*'}"

    def __str__(self) -> str:
        if self.dest is None:
            return f"change of {self.column}"
        if self.any_source:
            return f"entering {self.dest!r}"
        return f"{self.source!r} -> {self.dest!r}"


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


class HandlerTable:
    """The handlers of one workflow, keyed by route."""

    def __init__(self, workflow: Workflow) -> None:
        self._workflow = workflow
        self._by_route: dict[Route, HandlerSpec] = {}

    def decorator(
        self, route: Route, *, max_attempts: int | None = None, timeout_s: float | None = None
    ) -> Callable[[F], F]:
        self._check_route(route)

        def register(fn: F) -> F:
            self.add(HandlerSpec(
                fn=fn, name=f"{fn.__module__}.{fn.__qualname__}", workflow=self._workflow.name,
                route=route, takes_context=_takes_context(fn), max_attempts=max_attempts,
                timeout_s=timeout_s,
            ))
            return fn

        return register

    def add(self, spec: HandlerSpec) -> None:
        if (other := self._by_route.get(spec.route)) is not None:
            raise RegistrationError(
                f"workflow {self._workflow.name!r}: {spec.route} already has handler "
                f"{other.name}; cannot also register {spec.name}"
            )
        self._by_route[spec.route] = spec

    def _check_route(self, route: Route) -> None:
        wf = self._workflow
        where = f"workflow {wf.name!r}"
        if route.column == wf.column:
            if route.dest is None:
                raise RegistrationError(f"{where}: use on()/on_enter() for the state column")
            if route.dest not in wf.states:
                raise RegistrationError(f"{where} has no state {route.dest!r}")
            if not route.any_source and not wf.allows(route.source, route.dest):
                raise RegistrationError(
                    f"{where} does not allow {route.source!r} -> {route.dest!r}; "
                    "add the transition to the workflow or fix the handler's route"
                )
        elif route.column not in wf.watch:
            raise RegistrationError(f"{where} does not watch column {route.column!r}")

    def find(self, column: str, source: str | None, dest: str | None) -> HandlerSpec | None:
        """The handler for a change: exact transition first, then entering dest, then any."""
        table = self._by_route
        return (table.get(Route(column, source, dest))
                or table.get(Route(column, None, dest, any_source=True))
                or table.get(Route(column, None, None, any_source=True)))

    def __iter__(self) -> Iterator[HandlerSpec]:
        return iter(self._by_route.values())


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


class Registry:
    """All workflows a dispatcher serves, by name. Raises RegistrationError for a name twice."""

    def __init__(self, workflows: Iterable[Workflow]) -> None:
        self.workflows: dict[str, Workflow] = {}
        for wf in workflows:
            if wf.name in self.workflows and self.workflows[wf.name] is not wf:
                raise RegistrationError(f"two workflows are named {wf.name!r}")
            self.workflows[wf.name] = wf

    def route(self, event: Event) -> HandlerSpec | None:
        """The handler for an event, or None when its workflow has none for that change."""
        wf = self.workflows.get(event.workflow)
        if wf is None:
            return None
        return wf.handlers.find(event.column, event.old_value, event.new_value)

    def workflow(self, name: str) -> Workflow:
        try:
            return self.workflows[name]
        except KeyError:
            known = ", ".join(sorted(self.workflows)) or "none"
            raise OrchestratorError(f"unknown workflow {name!r} (known: {known})") from None


def load_registry(module_name: str) -> Registry:
    """Import ``module_name`` (and, for a package, each of its modules) and collect every
    module-level Workflow. Raises HandlerModuleError when the import fails or finds none."""
    from orchestrator.workflow import Workflow

    modules = list(_import_all(module_name))
    found = [value for module in modules for value in vars(module).values()
             if isinstance(value, Workflow)]
    if not found:
        raise HandlerModuleError(f"no Workflow found in handler module {module_name!r}")
    return Registry(found)


def _import_all(module_name: str) -> Iterator[ModuleType]:
    module = _import(module_name)
    yield module
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        yield _import(f"{module_name}.{info.name}")


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except OrchestratorError:
        raise
    except ModuleNotFoundError as exc:
        raise HandlerModuleError(f"cannot import handler module {name!r}: {exc}") from exc
    except Exception as exc:
        raise HandlerModuleError(
            f"importing handler module {name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
