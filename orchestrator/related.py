"""Related data a workflow reads with each event: an order's items, its customer, a total.

A workflow declares it by name (``Workflow(..., related={"items": Related.children(...)})``);
when an event is claimed, the dispatcher reads each declaration for the event's row, all
events of a batch in one round trip (``Store.with_related``), and the handler finds the
results in ``event.related`` (a remote handler in its request). Three kinds:

- ``Related.children(table, column)``: the rows of ``table`` whose ``column`` holds the row's
  key (or ``key=``, another column of the row): a list of objects, in no particular order.
- ``Related.parent(table, column)``: the row of ``table`` whose ``key`` (``id`` unless given)
  holds the row's ``column``: an object, or None when there is none.
- ``Related.query(sql)``: the rows of a SELECT whose ``%(name)s`` placeholders take the
  values of the row's columns of those names: a list of objects.

Declarations are checked twice: their shape when the workflow is built, and against the
database (tables, columns, the query's text) by ``orchestrator migrate``; either way a bad one
raises DefinitionError with one line that names it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import DefinitionError
from orchestrator.names import is_postgres_name

KINDS = ("children", "parent", "query")
PLACEHOLDER = re.compile(r"%\((\w+)\)s")
# A related name is a JSON key and needs only to be plain text.
RELATED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True)
class Related:
    """One declaration of related data; build it with ``children``, ``parent`` or ``query``.

    ``table`` is ``schema.table`` or a table of ``public``. ``column`` and ``key``: see the
    constructors. ``sql``: a query's text.
    """

    kind: str
    table: str = ""
    column: str = ""
    key: str | None = None
    sql: str = ""

    @classmethod
    def children(cls, table: str, column: str, *, key: str | None = None) -> Related:
        """The rows of ``table`` whose ``column`` equals the row's ``key`` column (the
        workflow's key by default), as a list."""
        return cls("children", table=table, column=column, key=key)

    @classmethod
    def parent(cls, table: str, column: str, *, key: str = "id") -> Related:
        """The row of ``table`` whose ``key`` equals the row's ``column``, or None."""
        return cls("parent", table=table, column=column, key=key)

    @classmethod
    def query(cls, sql: str) -> Related:
        """The rows of ``sql``, a SELECT (no trailing semicolon; a literal % written %%)
        whose ``%(name)s`` placeholders take the row's column ``name``, as a list."""
        return cls("query", sql=sql.strip().rstrip(";").rstrip())

    @property
    def schema_table(self) -> tuple[str, str]:
        schema, _, table = self.table.rpartition(".")
        return schema or "public", table

    def row_columns(self, workflow_key: str) -> tuple[str, ...]:
        """The columns of the workflow's row this declaration reads, in placeholder order."""
        if self.kind == "children":
            return (self.key or workflow_key,)
        if self.kind == "parent":
            return (self.column,)
        return tuple(dict.fromkeys(PLACEHOLDER.findall(self.sql)))

    def params(self, workflow_key: str, row: Mapping[str, Any]) -> dict[str, Any]:
        """The query's parameters for one row (as recorded in its event): ``value`` for
        children and parent, each placeholder's column for a query."""
        columns = self.row_columns(workflow_key)
        if self.kind == "query":
            return {c: row.get(c) for c in columns}
        return {"value": row.get(columns[0])}

    def definition(self) -> dict[str, Any]:
        """As plain data, for the workflow's stored definition."""
        if self.kind == "query":
            return {"kind": "query", "sql": self.sql}
        return {"kind": self.kind, "table": self.table, "column": self.column, "key": self.key}

    @classmethod
    def from_definition(cls, data: Mapping[str, Any]) -> Related:
        return cls(data["kind"], table=data.get("table", ""), column=data.get("column", ""),
                   key=data.get("key"), sql=data.get("sql", ""))


def checked(workflow: str, related: Mapping[str, Related]) -> dict[str, Related]:
    """``related`` as a dict, after checking each declaration's shape. Raises
    DefinitionError: a name that is not an identifier, a value that is not a Related, an
    empty or overlong table or column name, or a query that is empty or holds a ``%`` other
    than ``%(name)s`` and ``%%``."""
    if not isinstance(related, Mapping):
        raise DefinitionError(f"workflow {workflow!r}: related must map names to Related(...)")
    for name, rel in related.items():
        where = f"workflow {workflow!r}: related {name!r}"
        if not isinstance(name, str) or not RELATED_NAME.fullmatch(name):
            raise DefinitionError(f"{where}: a name is letters, digits and _ (at most 63)")
        if not isinstance(rel, Related) or rel.kind not in KINDS:
            raise DefinitionError(f"{where}: give Related.children(), .parent() or .query()")
        if rel.kind == "query":
            _check_query(where, rel.sql)
            continue
        schema, table = rel.schema_table
        for what, ident in (("schema", schema), ("table", table), ("column", rel.column),
                            ("key", rel.key or "id")):
            if not is_postgres_name(ident):
                raise DefinitionError(f"{where}: {what} {ident!r} is not a PostgreSQL name")
    return dict(related)


def _check_query(where: str, sql: str) -> None:
    if not sql:
        raise DefinitionError(f"{where}: the query is empty")
    if "%" in PLACEHOLDER.sub("", sql).replace("%%", ""):
        raise DefinitionError(f"{where}: placeholders are %(column)s; write a literal % as %%")
