"""Fixtures: a real PostgreSQL for the session, a fresh database per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from orchestrator.app import Orchestrator
from orchestrator.config import Settings
from orchestrator.dispatcher import Stats
from orchestrator.registry import Registry
from tests.support import database
from tests.support.database import private_dir

# Settings that keep tests quick: short backoff and lease, frequent polls.
FAST = {"retry_base_s": 0.05, "retry_max_s": 0.2, "lease_s": 5.0, "poll_interval_s": 0.2,
        "shutdown_grace_s": 5.0}


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    # Not under pytest's tmp_path: pytest removes old session folders when another session
    # starts, which would pull the data directory from under a running server.
    with private_dir("server") as workdir, database.server_dsn(workdir) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def template_db(admin_dsn: str) -> Iterator[str]:
    name = database.build_template(admin_dsn)
    yield name
    database.drop_database(admin_dsn, name)


@pytest.fixture
def dsn(admin_dsn: str, template_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, migrated database with the test workflows installed."""
    name = database.unique_name()
    url = database.create_database(admin_dsn, name, template=template_db)
    monkeypatch.setenv("JOBS_EXEC_LOG", url)
    yield url
    database.drop_database(admin_dsn, name)


@pytest.fixture
def registry() -> Registry:
    return database.test_registry()


@pytest.fixture
def sql(dsn: str) -> Iterator[Any]:
    """Run SQL on the test database: ``sql("select ...", params)`` returns all rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        def run(query: str, params: Any = None) -> list[tuple[Any, ...]]:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []
        yield run


@pytest.fixture
def settings(dsn: str) -> Settings:
    return Settings.load(env={}, dsn=dsn, **FAST)


@pytest.fixture
def run_idle(settings: Settings, registry: Registry) -> Any:
    """Run one in-process dispatcher until no event is open; its Stats."""
    def run(**overrides: Any) -> Stats:
        with Orchestrator(settings.replace(**overrides), registry) as orch:
            return orch.dispatcher(until_idle=True).run()
    return run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With ORCHESTRATOR_REQUIRE_ALL=1 (set by .ci/run), a skipped test fails: CI installs every
    outside binary a test may need, so a skip there means something is missing."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("ORCHESTRATOR_REQUIRE_ALL") == "1":
        report.outcome = "failed"
        report.longrepr = f"skipped, but ORCHESTRATOR_REQUIRE_ALL=1: {report.longrepr}"


def pytest_report_header(config: pytest.Config) -> str:
    where = (os.environ.get("ORCHESTRATOR_TEST_DSN") and "ORCHESTRATOR_TEST_DSN") or "embedded"
    return f"orchestrator test database: {where}"
