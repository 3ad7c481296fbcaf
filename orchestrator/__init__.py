"""orchestrator: a Postgres-driven workflow orchestrator.

Row changes are recorded as durable events by triggers; dispatchers claim them and run the
handler registered for each transition; a handler's outcome is written back with
compare-and-set, which records the next event.
"""

from orchestrator.app import Orchestrator
from orchestrator.config import Settings
from orchestrator.errors import OrchestratorError
from orchestrator.events import Event, Next, Retry
from orchestrator.registry import Registry, load_registry
from orchestrator.remote import Remote
from orchestrator.runner import Context
from orchestrator.schema import alembic_include_name, install_workflows
from orchestrator.workflow import Deadline, Workflow

__all__ = [
    "Context",
    "Deadline",
    "Event",
    "Next",
    "Orchestrator",
    "OrchestratorError",
    "Registry",
    "Remote",
    "Retry",
    "Settings",
    "Workflow",
    "alembic_include_name",
    "install_workflows",
    "load_registry",
]
