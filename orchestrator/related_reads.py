"""Reading the related data a workflow declares (``orchestrator.related``) for claimed events.

With db.py, store.py, install.py, slots.py and reports.py, one of the modules that talk to
psycopg. The store's ``with_related`` verb runs here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from orchestrator import install
from orchestrator.db import (
    as_param,
    behind_pooler,
    borrowed,
    is_connection_error,
    one_line,
    pipelined,
    rollback_quietly,
)
from orchestrator.errors import DatabaseUnavailable, RelatedDataError
from orchestrator.events import Event
from orchestrator.workflow import Workflow


class RelatedReader:
    """Reads the related data workflows declare (``orchestrator.related``) for claimed events."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self._composed: dict[tuple[str, str], bytes] = {}

    def read(self, events: Sequence[Event], workflows: Mapping[str, Workflow]
             ) -> tuple[list[Event], list[tuple[Event, RelatedDataError]]]:
        """As Store.with_related, for ``events`` of ``workflows``."""
        groups: dict[str, list[Event]] = {}
        for e in events:
            if workflows[e.workflow].related:
                groups.setdefault(e.workflow, []).append(e)
        if not groups:
            return list(events), []
        found: dict[int, dict[str, Any]] = {}
        errors: dict[str, RelatedDataError] = {}
        try:
            found = self._read(workflows, list(groups.values()))
        except RelatedDataError:  # which workflow's? each on its own
            for workflow, group in groups.items():
                try:
                    found |= self._read(workflows, [group])
                except RelatedDataError as exc:
                    errors[workflow] = exc
        ready = [replace(e, related=MappingProxyType(found[e.id])) if e.id in found else e
                 for e in events if e.workflow not in errors]
        return ready, [(e, errors[e.workflow]) for e in events if e.workflow in errors]

    def _read(self, workflows: Mapping[str, Workflow], groups: Sequence[Sequence[Event]]
              ) -> dict[int, dict[str, Any]]:
        """Each event's related data, by event id: one executemany per declaration, all in
        one pipeline. Raises RelatedDataError when a query fails."""
        sent: list[tuple[str, Sequence[Event], psycopg.Cursor[Any]]] = []
        with borrowed(self.pool) as conn:
            try:
                with pipelined(conn, commit=True, pooled=behind_pooler(self.pool)):
                    for group in groups:
                        wf = workflows[group[0].workflow]
                        for name, rel in wf.related.items():
                            cur = conn.cursor()
                            cur.executemany(self._sql(wf, name, conn), [
                                {k: as_param(v) for k, v in rel.params(wf.key, e.new_row).items()}
                                for e in group], returning=True)
                            sent.append((name, group, cur))
            except psycopg.Error as exc:
                rollback_quietly(conn)
                if is_connection_error(exc, conn):
                    raise DatabaseUnavailable(f"database error: {one_line(exc)}") from exc
                raise RelatedDataError(groups[0][0].workflow, one_line(exc)) from exc
        found: dict[int, dict[str, Any]] = {}
        for name, group, cur in sent:
            for i, e in enumerate(group):
                if i:
                    cur.nextset()
                row = cur.fetchone()
                found.setdefault(e.id, {})[name] = row[0] if row else None
        return found

    def _sql(self, wf: Workflow, name: str, conn: psycopg.Connection[Any]) -> bytes:
        # Composed once per declaration, as the write-backs are.
        if (query := self._composed.get((wf.name, name))) is None:
            query = install.related_query(wf.related[name]).as_bytes(conn)
            self._composed[(wf.name, name)] = query
        return query
