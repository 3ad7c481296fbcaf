"""Test an application's workflows with pytest: a throwaway database per test, a dispatcher run
until nothing is left to do, and assertions on the path a row took through its states.

Installed with orchestrator, this module is a pytest plugin (entry point ``pytest11``). An
application names its workflows (the ini option ``orchestrator_handlers``, or by overriding the
``orchestrator_registry`` fixture) and, when it has tables of its own, how to create them
(``orchestrator_schema``); each test then gets a fresh database with that schema, the
orchestrator schema migrated and the workflows installed:

    def test_an_order_is_delivered(orchestrator: Harness) -> None:
        key = orchestrator.sql("INSERT INTO orders DEFAULT VALUES RETURNING id")[0][0]
        orchestrator.run_until_idle()
        assert_path(orchestrator, "food_order", key, ["placed", "validated", "delivered"])

The server is an embedded PostgreSQL started once per test session in a temporary folder of
its own (stopped and removed at the end), or the one ``--orchestrator-dsn`` or
``ORCHESTRATOR_TEST_DSN`` names (its role needs CREATEDB). Each test's database is a copy of a
template database built once per schema and registry, so it costs a ``CREATE DATABASE``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, LiteralString, TypeAlias

import psycopg
import pytest
from psycopg import sql
from psycopg.abc import Params
from psycopg.rows import dict_row

from orchestrator import db
from orchestrator.config import Settings
from orchestrator.errors import OrchestratorError
from orchestrator.sql import REPORTS

if TYPE_CHECKING:
    from orchestrator.dispatcher import Stats
    from orchestrator.registry import Registry

__all__ = ["FAST_SETTINGS", "IDLE_TIMEOUT_S", "Harness", "Schema", "assert_path",
           "create_database", "drop_database", "unique_name"]

DSN_ENV = "ORCHESTRATOR_TEST_DSN"
HANDLERS_INI = "orchestrator_handlers"

#: Settings for a dispatcher under test: retries within a fraction of a second, a poll (and a
#: deadline check) every 0.1 s, and a lease a crashed test would not wait long for. No LISTEN:
#: the dispatcher claims what the test wrote when it starts and hands the events its own
#: writes create to itself, so a NOTIFY would wake it for nothing, and the LISTEN thread takes
#: a quarter of a second to stop.
FAST_SETTINGS: dict[str, Any] = {
    "poll_interval_s": 0.1, "lease_s": 5.0, "retry_base_s": 0.05, "retry_max_s": 0.2,
    "shutdown_grace_s": 5.0, "listen": False,
}
#: Seconds ``run_until_idle`` waits for the work to run out before it fails the test.
IDLE_TIMEOUT_S = 30.0
#: The embedded test server keeps nothing worth a disk flush: its data goes with the session.
THROWAWAY_SERVER = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
_LISTED_MAX = 10_000  # events listed by dead_events() and open_events()

#: A statement for ``Harness.sql``: a literal string or a composed ``psycopg.sql`` object.
Query: TypeAlias = "LiteralString | bytes | sql.SQL | sql.Composed"

#: How to create an application's own tables before the orchestrator schema: SQL text, a
#: ``.sql`` file, or a function given the new database's DSN (to run Alembic migrations, say).
Schema: TypeAlias = "str | Path | Callable[[str], None] | None"


# -- options --------------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("orchestrator").addoption(
        "--orchestrator-dsn", dest="orchestrator_dsn", metavar="DSN", default=None,
        help=f"PostgreSQL server for the test databases (any database on it; the role needs "
             f"CREATEDB). Default: ${DSN_ENV}, else an embedded server for the session.")
    parser.addini(HANDLERS_INI, "Module or package of the workflows under test (used by the "
                  "default orchestrator_registry fixture).", type="string", default="")


# -- fixtures an application overrides ------------------------------------------------------

@pytest.fixture
def orchestrator_registry(pytestconfig: pytest.Config) -> Registry:
    """The workflows under test: those of the ini option ``orchestrator_handlers``. Override it
    to return ``load_registry("myapp.workflows")`` or ``Registry([wf])``; without either, the
    test fails with that hint."""
    try:
        module = str(pytestconfig.getini(HANDLERS_INI))
    except ValueError:  # the fixtures are used without the plugin's options registered
        module = ""
    if not module:
        pytest.fail("orchestrator.testing has no workflows to test: override the "
                    "orchestrator_registry fixture, or set orchestrator_handlers = "
                    "<module> in the pytest configuration", pytrace=False)
    from orchestrator.registry import load_registry  # loaded when the fixture is used
    return load_registry(module)


@pytest.fixture
def orchestrator_schema() -> Schema:
    """The application's own tables, created before the orchestrator schema (see ``Schema``);
    None: nothing. Return the same object in every test (SQL text, a path, a module-level
    function): a template database is built once per distinct schema and registry."""
    return None


@pytest.fixture
def orchestrator_settings() -> dict[str, Any]:
    """Settings of the dispatcher under test, on top of ``Settings``' defaults (the
    environment's ``ORCHESTRATOR_*`` variables are ignored). Default: ``FAST_SETTINGS``."""
    return dict(FAST_SETTINGS)


# -- fixtures a test uses -------------------------------------------------------------------

@pytest.fixture(scope="session")
def orchestrator_server(pytestconfig: pytest.Config) -> Iterator[str]:
    """A DSN of the test server's maintenance database: ``--orchestrator-dsn``, else
    ``ORCHESTRATOR_TEST_DSN``, else an embedded server started for the session in a temporary
    folder, stopped and removed at its end. Raises EmbeddedServerError when it cannot start."""
    given = pytestconfig.getoption("orchestrator_dsn", default=None) or os.environ.get(DSN_ENV)
    if given:
        yield str(given)
        return
    # A folder of our own rather than pytest's tmp_path_factory: pytest removes old session
    # folders when another session starts, which would pull the data from under the server.
    workdir = Path(tempfile.mkdtemp(prefix="orchestrator-test-"))
    if os.geteuid() == 0:
        workdir.chmod(0o711)  # as root the server runs as another user, who must reach it
    from orchestrator.embedded import EmbeddedServer
    server = EmbeddedServer(workdir / "pg", settings=THROWAWAY_SERVER)
    try:
        yield server.start("postgres")
    finally:
        server.discard()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def _orchestrator_templates(orchestrator_server: str) -> Iterator[_Templates]:
    templates = _Templates(orchestrator_server)
    yield templates
    templates.drop_all()


@pytest.fixture
def orchestrator_db(orchestrator_server: str, _orchestrator_templates: _Templates,
                    orchestrator_schema: Schema, orchestrator_registry: Registry) -> Iterator[str]:
    """The DSN of this test's own database: the application's schema, the orchestrator schema
    and the workflows installed, no events. Dropped after the test."""
    template = _orchestrator_templates.get(orchestrator_schema, orchestrator_registry)
    name = unique_name("orch_test")
    dsn = create_database(orchestrator_server, name, template=template)
    yield dsn
    drop_database(orchestrator_server, name)


@pytest.fixture(name="orchestrator")
def orchestrator_harness(orchestrator_db: str, orchestrator_registry: Registry,
                         orchestrator_settings: dict[str, Any]) -> Iterator[Harness]:
    """A Harness on this test's own database: ``sql``, ``run_until_idle``, ``path``,
    ``handlers_run``, ``history``, ``dead_events``, ``open_events``."""
    settings = Settings.load(env={}, **(orchestrator_settings | {"dsn": orchestrator_db}))
    harness = Harness(settings, orchestrator_registry)
    yield harness
    harness.close()


# -- the harness ----------------------------------------------------------------------------

class Harness:
    """A test's database and what a test does with it: run SQL, run a dispatcher until no work
    is left, read what happened to a row. A row is named by its workflow and key (any value
    whose ``str`` is the key's text form: an int, a ``uuid.UUID``...)."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        if not settings.dsn:
            raise ValueError("Harness needs settings with a dsn")
        self.settings = settings
        self.registry = registry
        self.dsn: str = settings.dsn
        self._conn: psycopg.Connection[Any] | None = None

    def __repr__(self) -> str:
        database = psycopg.conninfo.conninfo_to_dict(self.dsn).get("dbname")
        return f"Harness(database={database!r}, workflows={sorted(self.registry.workflows)})"

    def sql(self, query: Query, params: Params | None = None) -> list[tuple[Any, ...]]:
        """Run one statement in a transaction of its own; its rows ([] when it returns none).
        A failing statement raises psycopg's error."""
        cur = self._connection().execute(query, params)
        return cur.fetchall() if cur.description else []

    def run_until_idle(self, *, timeout_s: float = IDLE_TIMEOUT_S, **overrides: Any) -> Stats:
        """Run one dispatcher in this process until no event of the registry's workflows is
        pending or running, and return what it did. A retry or a deadline still to come is
        waited for. ``overrides`` replace settings for this run (``max_attempts=2``).

        Raises AssertionError, listing the open events, when work is left after ``timeout_s``.
        """
        __tracebackhide__ = True
        timed_out = threading.Event()
        from orchestrator.app import Orchestrator
        with Orchestrator(self.settings.replace(**overrides), self.registry) as app:
            dispatcher = app.dispatcher(until_idle=True)

            def give_up() -> None:
                timed_out.set()
                dispatcher.stop()

            timer = threading.Timer(timeout_s, give_up)
            timer.daemon = True
            timer.start()
            try:
                stats = dispatcher.run()
            finally:
                timer.cancel()
        if timed_out.is_set() and (left := self.open_events()):
            lines = "\n".join(f"  {_describe(e)}" for e in left)
            raise AssertionError(f"work still open after {timeout_s:g} s:\n{lines}")
        return stats

    def history(self, workflow: str, key: object) -> list[dict[str, Any]]:
        """Every event of one row, oldest first: dicts with the columns of
        ``orchestrator.events`` (op, column_name, old_value, new_value, status, outcome,
        handler, next_state, attempts, last_error, created_at, finished_at, run_after...)."""
        return self._dicts(REPORTS["row_history"], {"workflow": workflow, "row_key": str(key)})

    def path(self, workflow: str, key: object) -> list[str]:
        """The states a row went through, in order, up to the one it is in now: its state when
        inserted, then each change of the state column (by a handler, a deadline or anyone
        else). [] when the row has no events. Raises OrchestratorError for a workflow the
        registry does not have or one without a state column (see ``history``)."""
        column = self.registry.workflow(workflow).column
        if column is None:
            raise OrchestratorError(f"workflow {workflow!r} has no state column, so no path: "
                                    "read its history")
        states: list[str] = []
        for event in self.history(workflow, key):
            if event["column_name"] != column or event["op"] == "TIMER":
                continue
            if not states and event["op"] == "UPDATE":  # the row predates its triggers
                states.append(event["old_value"])
            states.append(event["new_value"])
        return states

    def handlers_run(self, workflow: str, key: object) -> list[str]:
        """The handlers that ran for a row, one per event, in the order they finished: each by
        its function name (``triage`` for ``myapp.workflows.triage``); a deadline that moved
        the row is ``deadline``. Retries of one event count once (see ``history``)."""
        ran = [e for e in self.history(workflow, key) if e["handler"] is not None]
        ran.sort(key=lambda e: (e["finished_at"] is None, e["finished_at"] or 0, e["id"]))
        return [str(e["handler"]).rpartition(".")[2] for e in ran]

    def dead_events(self, workflow: str | None = None) -> list[dict[str, Any]]:
        """Events that ran out of attempts (or failed for good), oldest first, as ``history``
        gives them; of one workflow, or of all."""
        return self._events("dead", workflow)

    def open_events(self, workflow: str | None = None) -> list[dict[str, Any]]:
        """Events still pending (due or not) or running, oldest first."""
        events = self._events("pending", workflow) + self._events("running", workflow)
        return sorted(events, key=lambda e: int(e["id"]))

    def close(self) -> None:
        """Close the connection ``sql`` and the readers use; the fixture does it after a test."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.dsn, autocommit=True)
        return self._conn

    def _dicts(self, query: Query, params: Params) -> list[dict[str, Any]]:
        with self._connection().cursor(row_factory=dict_row) as cur:
            return cur.execute(query, params).fetchall()

    def _events(self, status: str, workflow: str | None) -> list[dict[str, Any]]:
        newest_first = self._dicts(REPORTS["list_events"], {
            "status": status, "workflow": workflow, "row_key": None, "search": None,
            "limit": _LISTED_MAX})
        return newest_first[::-1]


def assert_path(orchestrator: Harness, workflow: str, key: object,
                expected: Sequence[str]) -> None:
    """Assert that a row went through exactly the states ``expected``, in order. The
    AssertionError shows the expected and actual paths, the handlers that ran, and the row's
    dead and still open events with their last error."""
    __tracebackhide__ = True
    actual = orchestrator.path(workflow, key)
    if actual == list(expected):
        return
    lines = [f"row {key} of workflow {workflow!r} took another path",
             f"  expected: {_arrows(expected)}",
             f"  actual:   {_arrows(actual) if actual else '(no events: no such row?)'}",
             f"  handlers run: {', '.join(orchestrator.handlers_run(workflow, key)) or 'none'}"]
    lines += [f"  {_describe(e, row=False)}" for e in orchestrator.history(workflow, key)
              if e["status"] != "done"]
    raise AssertionError("\n".join(lines))


# -- internals ------------------------------------------------------------------------------

class _Templates:
    """The session's template databases, one per distinct schema and registry, built on first
    use and dropped at the end of the session."""

    def __init__(self, server_dsn: str) -> None:
        self.server_dsn = server_dsn
        self._built: dict[tuple[object, ...], tuple[str, Registry]] = {}

    def get(self, schema: Schema, registry: Registry) -> str:
        """The name of the template for ``schema`` and ``registry``, built if need be."""
        key = (schema, *(id(wf) for wf in registry.workflows.values()))
        if key not in self._built:
            # The registry is kept so that the ids of its workflows stay theirs.
            self._built[key] = (self._build(schema, registry), registry)
        return self._built[key][0]

    def drop_all(self) -> None:
        for name, _ in self._built.values():
            drop_database(self.server_dsn, name)
        self._built.clear()

    def _build(self, schema: Schema, registry: Registry) -> str:
        name = unique_name("orch_tmpl")
        dsn = create_database(self.server_dsn, name)
        try:
            _create_app_schema(dsn, schema)
            from orchestrator.app import Orchestrator
            with Orchestrator(Settings.load(env={}, dsn=dsn), registry) as app:
                app.migrate()
        except BaseException:
            drop_database(self.server_dsn, name)
            raise
        return name


def _create_app_schema(dsn: str, schema: Schema) -> None:
    if schema is None:
        return
    if callable(schema):
        schema(dsn)
        return
    text = schema.read_text(encoding="utf-8") if isinstance(schema, Path) else schema
    with db.connect(dsn, autocommit=True) as conn:
        conn.execute(text)  # the application's own DDL, as given


def create_database(server_dsn: str, name: str, template: str | None = None) -> str:
    """Create database ``name`` on ``server_dsn``'s server (a copy of ``template`` if given);
    its DSN. Needs CREATEDB."""
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with db.connect(server_dsn, autocommit=True) as conn:
        conn.execute(query)
    return psycopg.conninfo.make_conninfo(server_dsn, dbname=name)


def drop_database(server_dsn: str, name: str) -> None:
    """Drop database ``name`` if it exists, even with sessions still on it."""
    # FORCE: a connection a test left open (a thread still running) must not keep it.
    with db.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def unique_name(prefix: str = "orch_test") -> str:
    """``prefix`` and a random suffix: a database name no other test run takes."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _arrows(states: Sequence[str]) -> str:
    return " -> ".join(states)


def _describe(event: dict[str, Any], *, row: bool = True) -> str:
    """One line about an event: its change, where it stands, its handler and last error."""
    change = (f"{event['column_name']}: {event['old_value']} -> {event['new_value']}"
              if event["op"] != "INSERT" else f"inserted in {event['new_value']}")
    kind = "deadline" if event["op"] == "TIMER" else "event"
    of_row = f" of row {event['row_key']}" if row else ""
    attempts = int(event["attempts"])
    line = (f"{event['status']} {kind} {event['id']}{of_row} ({change}): "
            f"{attempts} attempt{'s' if attempts != 1 else ''}")
    if event["status"] == "pending" and event["run_after"] is not None:
        due_in_s = (event["run_after"] - datetime.now(UTC)).total_seconds()
        line += f", due in {due_in_s:.1f} s" if due_in_s > 0 else ", due now"
    if event["handler"]:
        line += f", handler {event['handler']}"
    if event["last_error"]:
        line += f", last error: {event['last_error']}"
    return line
