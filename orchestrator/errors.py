"""One root exception and its children.

Each class's docstring is its default message; a few take domain arguments and say more. The CLI
prints ``str(error)`` as one line and exits 1.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """The orchestrator failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip().splitlines()[0])


class ConfigError(OrchestratorError):
    """A setting has an invalid value."""


class DefinitionError(OrchestratorError):
    """A workflow definition is invalid."""


class RegistrationError(OrchestratorError):
    """A handler cannot be registered."""


class HandlerModuleError(OrchestratorError):
    """The handler module could not be loaded."""


class StoreError(OrchestratorError):
    """A database operation failed."""


class DatabaseUnavailable(StoreError):
    """The database cannot be reached."""


class PreparedStatementsLost(StoreError):
    """The database connection goes through a transaction-mode pooler (PgBouncer, RDS Proxy,
    Supavisor), which does not keep prepared statements between transactions."""

    HINT = ("the DSN goes through a pooler in transaction mode, where server-side prepared "
            "statements do not last: pass --transaction-pooling (or set "
            "ORCHESTRATOR_TRANSACTION_POOLING=true)")

    def __init__(self, detail: str) -> None:
        # ``detail``: the driver's message, which db.one_line ends with HINT
        super().__init__(f"database error: {detail}")


class MigrationError(StoreError):
    """The migration failed."""


class NotMigrated(StoreError):
    """The database has no orchestrator schema: run `orchestrator migrate` first."""


class RelatedDataError(StoreError):
    """The related data a workflow declares could not be read."""

    def __init__(self, workflow: str, error: str) -> None:
        super().__init__(f"workflow {workflow!r}: related data: {error}")
        self.workflow = workflow


class IllegalTransition(OrchestratorError):
    """The workflow does not allow this transition."""

    def __init__(self, workflow: str, from_state: str | None, to_state: str) -> None:
        super().__init__(f"workflow {workflow!r} does not allow {from_state!r} -> {to_state!r}")
        self.workflow = workflow
        self.from_state = from_state
        self.to_state = to_state


class OverrideRefused(OrchestratorError):
    """Only members of orchestrator_admin (or superusers) may move a row outside its workflow."""

    def __init__(self, user: str, event_ids: list[int]) -> None:
        ids = ", ".join(map(str, event_ids))
        super().__init__(
            f"redriving event {ids} would move its row out of the failure state, which only "
            f"members of orchestrator_admin may do, and {user} is not one (GRANT "
            f"orchestrator_admin TO {user}); nothing was redriven")
        self.user = user
        self.event_ids = event_ids


class BadOutcome(OrchestratorError):
    """A handler returned something that is not an outcome."""


class HandlerTimeout(OrchestratorError):
    """A handler ran past its timeout."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"handler timed out after {timeout_s:g}s")
        self.timeout_s = timeout_s


class SyncOnly(OrchestratorError):
    """ctx.db is a blocking connection, for sync handlers only: an async handler would stall
    every other async handler while it waits (use a connection of your own, or a sync handler)."""


class EmbeddedServerError(OrchestratorError):
    """The embedded PostgreSQL server failed."""


class CredentialsError(OrchestratorError):
    """The database password could not be obtained."""


class Busy(OrchestratorError):
    """Another expensive read is under way: ask again in a moment."""


class RemoteHandlerError(OrchestratorError):
    """A remote handler did not answer with an outcome."""


class SignatureError(OrchestratorError):
    """The request signature is missing, stale or wrong."""
