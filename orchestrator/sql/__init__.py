"""Named runtime queries, loaded once at import: the dispatcher's (queries.sql), installing
workflows (install.sql) and the operators' (reports.sql)."""

from __future__ import annotations

import re
from importlib import resources
from typing import LiteralString, cast

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load_queries(package: str, filename: str = "queries.sql") -> dict[str, LiteralString]:
    """The ``-- name: x`` queries of a package's .sql file, by name."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    queries = {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
    return cast(dict[str, LiteralString], queries)


QUERIES = load_queries(__package__)
INSTALL = load_queries(__package__, "install.sql")
REPORTS = load_queries(__package__, "reports.sql")
