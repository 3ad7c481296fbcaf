"""PostgreSQL's names: how long one may be, and which a workflow or a declaration may use."""

from __future__ import annotations

# PostgreSQL keeps at most this many bytes of a name (NAMEDATALEN - 1) and cuts longer ones.
MAX_IDENTIFIER_BYTES = 63


def is_postgres_name(identifier: str) -> bool:
    """Whether PostgreSQL keeps ``identifier`` as given: 1 to 63 bytes, no zero byte."""
    return (bool(identifier) and "\0" not in identifier
            and len(identifier.encode()) <= MAX_IDENTIFIER_BYTES)
