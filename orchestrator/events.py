"""What a handler receives (Event) and what it may give back (Next, or raise Retry)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from orchestrator.errors import BadOutcome

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded row change, as a handler sees it. Immutable.

    ``old_row`` is empty for an INSERT. ``attempt`` counts from 1. ``id`` is unique across the
    database and stable across retries, so ``idempotency_key`` can be handed to outside systems.
    ``session_variables``: what the writing transaction set as ``orchestrator.session`` (or
    Hasura's ``hasura.user``), empty when it set neither. ``related``: the data the workflow
    declares with ``related=`` (``orchestrator.related``), read when the event is claimed,
    by name; empty when it declares none.
    """

    id: int
    workflow: str
    key: str
    column: str
    op: str
    old_value: str | None
    new_value: str | None
    old_row: Mapping[str, Any]
    new_row: Mapping[str, Any]
    attempt: int
    created_at: datetime
    session_variables: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    related: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @property
    def idempotency_key(self) -> str:
        return f"{self.workflow}:{self.id}"

    @property
    def changed(self) -> frozenset[str]:
        """Columns whose value differs between old and new row (every column for an INSERT)."""
        return frozenset(k for k, v in self.new_row.items() if k not in self.old_row
                         or self.old_row[k] != v)

    @property
    def transition(self) -> str:
        return f"{self.column}: {self.old_value} -> {self.new_value}"


@dataclass(frozen=True, slots=True)
class Next:
    """A handler's outcome: move the row to ``state`` and/or set other columns.

    ``state=None`` writes only ``values``. Either way the write applies only if the row is still in
    the state the event saw.
    """

    state: str | None = None
    values: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


class Retry(Exception):
    """Raised by a handler to be run again after ``delay_s`` seconds (counts as an attempt)."""

    def __init__(self, delay_s: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay_s = delay_s


def as_outcome(result: object) -> Next | None:
    """Turn what a handler returned into a Next (or None for "nothing to write").

    Accepts None, a state name, or a Next. Raises BadOutcome for anything else.
    """
    if result is None or isinstance(result, Next):
        return result
    if isinstance(result, str):
        return Next(state=result)
    raise BadOutcome(
        f"handler returned {type(result).__name__} {result!r:.80}; "
        "expected None, a state name or Next(...)"
    )


def event_from_row(row: Mapping[str, Any]) -> Event:
    """Build an Event from a claimed row of orchestrator.events, read by column name (the
    RETURNING list of the claim queries)."""
    old_row, session = row["old_row"], row["session_variables"]
    return Event(
        id=row["id"], workflow=row["workflow"], key=row["row_key"], column=row["column_name"],
        op=row["op"], old_value=row["old_value"], new_value=row["new_value"],
        old_row=MappingProxyType(old_row) if old_row else _EMPTY,
        new_row=MappingProxyType(row["new_row"]), attempt=row["attempts"],
        created_at=row["created_at"],
        session_variables=MappingProxyType(session) if session else _EMPTY,
    )
