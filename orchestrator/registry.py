"""The registry: every workflow a dispatcher serves, and the handler that serves an event.

``load_registry`` imports the handler modules; registration happens at their import time and
refuses illegal or duplicate routes, so a dispatcher never starts with a handler set it cannot
honour. Imports run one way: routing <- workflow <- registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING

from orchestrator.errors import HandlerModuleError, OrchestratorError, RegistrationError
from orchestrator.routing import HandlerSpec, Limit
from orchestrator.workflow import Workflow

if TYPE_CHECKING:
    from orchestrator.events import Event

# HandlerSpec lives in routing; it is listed here as well for the modules that import it with
# the Registry that returns it.
__all__ = ["HandlerSpec", "Registry", "load_registry"]


class Registry:
    """All workflows a dispatcher serves, by name. Raises RegistrationError for a name twice."""

    def __init__(self, workflows: Iterable[Workflow]) -> None:
        self.workflows: dict[str, Workflow] = {}
        for wf in workflows:
            if wf.name in self.workflows and self.workflows[wf.name] is not wf:
                raise RegistrationError(f"two workflows are named {wf.name!r}")
            self.workflows[wf.name] = wf
        self.limits = _limits(self.workflows.values())

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


def _limits(workflows: Iterable[Workflow]) -> dict[str, Limit]:
    """Every named Limit of the handlers, by name. Raises RegistrationError when two handlers
    give one name different bounds."""
    limits: dict[str, Limit] = {}
    for wf in workflows:
        for spec in wf.handlers:
            if spec.limit is None:
                continue
            assert spec.limit.name is not None  # named when registered
            other = limits.setdefault(spec.limit.name, spec.limit)
            if other != spec.limit:
                raise RegistrationError(
                    f"limit {spec.limit.name!r} is declared twice with different bounds "
                    f"({other.as_list()} and {spec.limit.as_list()})")
    return limits


def load_registry(module_name: str) -> Registry:
    """Import ``module_name`` (and, for a package, each of its modules) and collect every
    module-level Workflow. Raises HandlerModuleError when the import fails or finds none."""
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
