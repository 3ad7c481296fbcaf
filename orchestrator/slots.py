"""Fleet-wide limits in the database: a slot for each run at once, a token bucket for the rate.

The store's ``admit`` verb runs here, on the connection it lends; with db.py, store.py,
install.py and reports.py, one of the modules that talk to psycopg. The queries, and why they
lock as they do, are in ``sql/queries.sql`` (``take_slots``, ``take_tokens``, ``wait_turn``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from orchestrator.routing import Limit
from orchestrator.sql import QUERIES


def admit(conn: psycopg.Connection[Any], wanted: Mapping[Limit, Sequence[int]], *,
          wait_s: float, dispatcher: str) -> set[int]:
    """For each limit, the claimed events of ``wanted`` that may run now (a free slot when
    it bounds runs at once, a token when it has a rate), in their order; the others go back
    to the queue for ``wait_s`` seconds without using an attempt (claims of ``dispatcher``
    only). One transaction on ``conn``; driver errors propagate to the caller's translation."""
    admitted: set[int] = set()
    with conn.transaction():
        for limit, ids in wanted.items():
            passing = _turns(conn, limit, list(ids))
            admitted.update(passing)
            if waiting := [i for i in ids if i not in passing]:
                conn.execute(QUERIES["wait_turn"], {
                    "name": limit.name, "ids": waiting, "delay_s": wait_s,
                    "dispatcher": dispatcher})
    return admitted


def _turns(conn: psycopg.Connection[Any], limit: Limit, ids: list[int]) -> set[int]:
    """The first of ``ids`` to get a slot and then a token; slots taken for events the rate
    holds back are given back."""
    where = {"name": limit.name, "ids": ids}
    passing = ids
    if limit.max_running:
        taken = {row[0] for row in conn.execute(QUERIES["take_slots"], where)}
        passing = [i for i in ids if i in taken]
    if limit.per_s and passing:
        row = conn.execute(QUERIES["take_tokens"], where | {"count": len(passing)}).fetchone()
        allowed = row[0] if row else len(passing)
        if limit.max_running and allowed < len(passing):
            conn.execute(QUERIES["give_slots_back"], where | {"ids": passing[allowed:]})
        passing = passing[:allowed]
    return set(passing)
