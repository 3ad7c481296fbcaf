"""Fault tests break things: each gets a PostgreSQL server of its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.embedded import EmbeddedServer
from tests.support import database


@pytest.fixture
def own_server() -> Iterator[tuple[EmbeddedServer, str]]:
    """An embedded server for this test only, with a prepared database; (server, dsn)."""
    with database.private_dir("fault") as workdir:
        server = EmbeddedServer(workdir / "pg")
        dsn = server.start("orchestrator")
        try:
            database.prepare(dsn)
            yield server, dsn
        finally:
            server.discard()
