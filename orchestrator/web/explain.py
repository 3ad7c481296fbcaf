"""Why a row is where it is, in words, from its latest event (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def duration(seconds: float | None) -> str:
    """``seconds`` as a person reads it: 0.4s, 42s, 3m 05s, 2h 10m, 3d 4h."""
    if seconds is None:
        return "?"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m {sec:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h}h"


def short(handler: str | None) -> str:
    """A handler's function name without its module."""
    return (handler or "").rsplit(".", 1)[-1] or "its handler"


def why(row: Mapping[str, Any]) -> str:
    """What a row waits for, or what failed: its latest event's state, then its deadline."""
    reason = _event_reason(row)
    if row.get("deadline_to") is not None:
        reason += (f"; moves to {row['deadline_to']} in {duration(row['deadline_in_s'])} "
                   "if still here")
    return reason


def _event_reason(row: Mapping[str, Any]) -> str:
    status, handler = row.get("status"), short(row.get("handler"))
    if row.get("event_id") is None:
        return "no event recorded (the row predates the triggers)"
    if status == "dead":
        return f"dead after {row['attempts']} attempt(s): {row['last_error']}"
    if status == "running":
        return f"{handler} running (attempt {row['attempts']})"
    if status == "pending" and row.get("last_error"):
        return (f"attempt {row['attempts'] + 1} in {duration(row['run_in_s'])}, after: "
                f"{row['last_error']}")
    if status == "pending":
        return "waiting for a dispatcher"
    if row.get("outcome") == "noop":
        return f"{handler} did nothing: waits for another change"
    if row.get("outcome") == "no_handler":
        return "no handler for this change: waits for a change from outside"
    if row.get("outcome") == "stale":
        return f"{handler}'s outcome came too late (the row had moved on)"
    return f"last change handled by {handler} ({row.get('outcome')})"
