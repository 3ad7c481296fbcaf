"""The request shape of Hasura's event triggers, for ``Remote(..., shape="hasura")``.

A function written for a Hasura event trigger runs unchanged: it receives the JSON Hasura
sends (``event.op``, ``event.data.old/new``, ``event.session_variables`` (the writing
transaction's ``hasura.user`` or ``orchestrator.session``), ``event.trace_context``,
``trigger.name``, ``table.schema/name``, ``id``, ``created_at``, ``delivery_info``), and
``event.related``, the workflow's related data (Hasura sends no such key). It answers as it
answers Hasura: any 2xx is success, and the function writes to the database itself (the
engine writes no outcome); a non-2xx with ``Retry-After`` asks for a retry after that delay;
any other answer fails the attempt (retried with backoff).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from orchestrator.errors import RemoteHandlerError
from orchestrator.events import Event, Next, Retry
from orchestrator.remote_http import retry_after_s

# Event ids are the orchestrator's integers; Hasura's are UUIDs, derived here from the
# idempotency key so that every attempt at an event carries the same one.
ID_NAMESPACE = uuid.UUID("5f1d7e42-8c1a-4f0e-9a51-0c0a7e1b2d3f")


class Where(Protocol):
    """What the shape needs to know of the attempt (a runner.Context has it)."""

    @property
    def table(self) -> tuple[str, str]: ...

    @property
    def max_attempts(self) -> int: ...


def event_uuid(event: Event) -> str:
    """The event's id as Hasura gives it: a UUID, the same for every attempt."""
    return str(uuid.uuid5(ID_NAMESPACE, event.idempotency_key))


def request_body(event: Event, ctx: Where, trigger: str, trace: str) -> dict[str, Any]:
    """The JSON a Hasura event trigger POSTs, for ``event`` (``trace``: its traceparent)."""
    schema, table = ctx.table
    _, trace_id, span_id, _ = trace.split("-")
    return {
        "event": {
            "op": event.op,
            "data": {"old": dict(event.old_row) if event.old_row else None,
                     "new": dict(event.new_row)},
            "session_variables": dict(event.session_variables),
            "related": dict(event.related),
            "trace_context": {"trace_id": trace_id, "span_id": span_id},
        },
        "created_at": event.created_at.isoformat(),
        "id": event_uuid(event),
        "delivery_info": {"max_retries": max(ctx.max_attempts - 1, 0),
                          "current_retry": event.attempt - 1},
        "trigger": {"name": trigger},
        "table": {"schema": schema, "name": table},
    }


def outcome(status: int, headers: Mapping[str, str], content: bytes, where: str, *,
            max_delay_s: float) -> Next | None:
    """A Hasura-style answer: None for any 2xx (the function wrote what it wanted); raises
    Retry for a non-2xx with Retry-After (its delay cut to ``max_delay_s``), else
    RemoteHandlerError."""
    if 200 <= status < 300:
        return None
    if (after := retry_after_s(headers.get("retry-after"))) is not None:
        raise Retry(delay_s=min(after, max_delay_s), reason=f"{where} answered {status}")
    text = content[:200].decode(errors="replace").strip()
    raise RemoteHandlerError(f"{where} answered HTTP {status}" + (f": {text}" if text else ""))
