"""The store verbs the engine's loop uses, as Protocols.

``orchestrator.store.Store`` implements them on PostgreSQL; unit tests of the dispatcher and the
runner fake them in memory (tests/support/fake_store.py). Each verb's contract, and how it fails,
is documented on the Store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Protocol

from orchestrator.errors import RelatedDataError
from orchestrator.events import Event
from orchestrator.outcomes import FinishReport, Pruned, Result
from orchestrator.routing import Limit
from orchestrator.workflow import Workflow


class HandlerTransaction(Protocol):
    """A handler's own transaction, begun on first use of ``connection``."""

    @property
    def pid(self) -> int | None:
        """The server session of the transaction, once begun (to end it on a timeout)."""

    @property
    def started(self) -> bool:
        """Whether ``connection`` was used."""

    @property
    def connection(self) -> Any:
        """The connection, inside the transaction (taken from the pool on first use)."""

    def close(self, *, commit: bool = False) -> None:
        """End the transaction and give the connection back; never raises."""


class RunnerStore(Protocol):
    """What the runner needs: transactions for handlers, and writing a result inside one."""

    def transaction(self) -> HandlerTransaction: ...

    def finish(self, results: Sequence[Result], *, conn: Any = None,
               quiet: bool = True) -> FinishReport: ...

    def terminate_backend(self, pid: int) -> None: ...

    def columns(self, workflow: str) -> frozenset[str]: ...


class EventQueue(RunnerStore, Protocol):
    """What the dispatcher needs besides: claiming, leases, giving back, and its workflows."""

    def use_workflows(self, workflows: Sequence[Workflow]) -> None: ...

    def verify_workflows(self, workflows: Sequence[Workflow]) -> None: ...

    def claim(self, limit: int, *, suspect: bool = False) -> list[Event]: ...

    def claim_timers(self, limit: int) -> list[Event]: ...

    def with_related(self, events: Sequence[Event]
                     ) -> tuple[list[Event], list[tuple[Event, RelatedDataError]]]: ...

    def has_suspects(self) -> bool: ...

    def extend_leases(self, ids: Sequence[int]) -> None: ...

    def requeue_expired(self) -> list[int]: ...

    def release(self, ids: Sequence[int] = (), *,
                all_but: Sequence[int] | None = None) -> int: ...

    def has_open_events(self) -> bool: ...

    def admit(self, wanted: Mapping[Limit, Sequence[int]], *, wait_s: float) -> set[int]: ...

    def archive(self, *, after_s: float, max_rows: int,
                width: timedelta = ...) -> int | None: ...

    def prune(self, older_than: timedelta) -> Pruned | None: ...
