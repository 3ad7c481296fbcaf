"""orchestrator: a Postgres-driven workflow orchestrator.

Row changes are recorded as durable events by triggers; dispatchers claim them and run the
handler registered for each transition; a handler's outcome is written back with
compare-and-set, which records the next event.

The public names below are imported on first use, so that importing a part of the package
(the pytest plugin, say) does not load all of it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.app import Orchestrator
    from orchestrator.config import Settings
    from orchestrator.errors import OrchestratorError
    from orchestrator.events import Event, Next, Retry
    from orchestrator.registry import Registry, load_registry
    from orchestrator.related import Related
    from orchestrator.remote import Remote
    from orchestrator.routing import Limit
    from orchestrator.runner import Context
    from orchestrator.schema import alembic_include_name, install_workflows
    from orchestrator.workflow import Deadline, Workflow

_HOMES = {
    "Context": "runner", "Deadline": "workflow", "Event": "events", "Limit": "routing",
    "Next": "events",
    "Orchestrator": "app", "OrchestratorError": "errors", "Registry": "registry",
    "Related": "related", "Remote": "remote", "Retry": "events", "Settings": "config",
    "Workflow": "workflow",
    "alembic_include_name": "schema", "install_workflows": "schema",
    "load_registry": "registry",
}

__all__ = [
    "Context",
    "Deadline",
    "Event",
    "Limit",
    "Next",
    "Orchestrator",
    "OrchestratorError",
    "Registry",
    "Related",
    "Remote",
    "Retry",
    "Settings",
    "Workflow",
    "alembic_include_name",
    "install_workflows",
    "load_registry",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"orchestrator.{home}"), name)
    globals()[name] = value
    return value
