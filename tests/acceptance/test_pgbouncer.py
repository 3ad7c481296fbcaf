"""Work connections through a real PgBouncer in transaction pooling mode, LISTEN direct."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import _pipeline_base, conninfo

from orchestrator.app import Orchestrator
from orchestrator.config import Settings
from orchestrator.db import Transaction
from tests.acceptance.test_cli import cli
from tests.support import database, exactly_once, servers
from tests.support.database import place_order, private_dir

TERMINAL = {"delivered", "rejected", "cancelled", "failed"}


def test_the_demo_completes_through_pgbouncer_with_listen_on_a_direct_connection(
        dsn: str, sql: Any) -> None:
    with private_dir("pgbouncer") as workdir, \
            servers.pgbouncer(dsn, workdir, pool_size=3) as pooled:
        seeded = cli("seed", "--orders", "40", "--dsn", pooled)
        assert seeded.returncode == 0, seeded.stderr
        done = cli("run", "--until-idle", "--dsn", pooled, "--listen-dsn", dsn,
                   "--transaction-pooling", "--concurrency", "6", "--pool-size", "4")
        assert done.returncode == 0, done.stderr
        transactions = pgbouncer_transactions(pooled)
    states = dict(sql("SELECT status, count(*) FROM orders GROUP BY 1"))
    assert sum(states.values()) == 40
    assert set(states) <= TERMINAL
    assert sql("SELECT count(*) FROM orchestrator.events WHERE status IN ('pending', 'running')"
               ) == [(0,)]
    exactly_once.assert_charged_once(sql)
    exactly_once.assert_no_state_written_twice(sql)
    # Server-side prepared statements break here (each transaction may get another server
    # session): no attempt may have failed for that reason.
    assert sql("SELECT count(*) FROM orchestrator.event_errors WHERE error LIKE '%%prepared%%'"
               ) == [(0,)]
    applied = sql("SELECT count(*) FROM orchestrator.event_log WHERE outcome = 'applied'")[0][0]
    assert transactions >= applied, "the work did not go through PgBouncer"


def pgbouncer_transactions(pooled_dsn: str) -> int:
    """Transactions PgBouncer carried for the database, from its admin console."""
    params = conninfo.conninfo_to_dict(pooled_dsn)
    admin = conninfo.make_conninfo(pooled_dsn, dbname="pgbouncer")
    with psycopg.connect(admin, autocommit=True, prepare_threshold=None) as conn:
        cur = conn.execute("SHOW STATS")
        names = [c.name for c in cur.description or []]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return sum(int(r["total_xact_count"]) for r in rows if r["database"] == params["dbname"])


def test_a_handlers_server_session_is_found_through_pgbouncer(
        dsn: str, sql: Any) -> None:
    """A timed-out handler's session is terminated by its server pid, which a transaction
    pooler does not tell at connect time: the pooled transaction asks the server."""
    with private_dir("pgbouncer") as workdir, servers.pgbouncer(dsn, workdir) as pooled:
        settings = Settings.load(env={}, dsn=pooled, transaction_pooling=True, listen=False)
        with Orchestrator(settings) as orch:
            tx = Transaction(orch.pool, pooled=True)
            conn = tx.connection
            assert tx.pid != conn.info.backend_pid, "PgBouncer told the server's pid"
            assert sql("SELECT state FROM pg_stat_activity WHERE pid = %s", (tx.pid,)) == [
                ("idle in transaction",)]
            orch.store.terminate_backend(tx.pid)
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
            tx.close()


def test_a_pooler_found_without_the_flag_still_gives_handlers_the_servers_pid(
        dsn: str, sql: Any) -> None:
    """Without --transaction-pooling the pid a connection was told is the pooler's invention;
    once a pooler is found, handler transactions ask the server, so a timed-out handler's
    session (and no other) is the one terminated."""
    with private_dir("pgbouncer") as workdir, servers.pgbouncer(dsn, workdir) as pooled:
        settings = Settings.load(env={}, dsn=pooled, listen=False)
        with Orchestrator(settings) as orch:
            tx = orch.store.transaction()
            conn = tx.connection
            assert tx.pid != conn.info.backend_pid
            assert sql("SELECT state FROM pg_stat_activity WHERE pid = %s", (tx.pid,)) == [
                ("idle in transaction",)]
            tx.close()


def test_a_pooler_without_the_flag_is_found_named_and_worked_around(dsn: str, sql: Any) -> None:
    """Without --transaction-pooling, a dispatcher would fail with 'prepared statement
    "_pg3_24" does not exist'. Each new pooled connection compares the server's process id
    with the one it was told: PgBouncer's differs, so prepared statements are turned off, one
    warning names the flag, and the work completes."""
    with private_dir("pgbouncer") as workdir, \
            servers.pgbouncer(dsn, workdir, pool_size=2) as pooled:
        seeded = cli("seed", "--orders", "40", "--dsn", pooled)
        assert seeded.returncode == 0, seeded.stderr
        done = cli("run", "--until-idle", "--dsn", pooled, "--listen-dsn", dsn,
                   "--concurrency", "6", "--pool-size", "4")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "connection pooler" in line]
    assert len(warnings) == 1, done.stderr
    assert warnings[0].endswith("server-side prepared statements are off; pass "
                                "--transaction-pooling to say so, and give LISTEN a direct "
                                "connection (--listen-dsn) or --no-listen")
    assert sql("SELECT count(*) FROM orchestrator.event_errors WHERE error LIKE '%%prepared%%'"
               ) == [(0,)]
    states = dict(sql("SELECT status, count(*) FROM orders GROUP BY 1"))
    assert sum(states.values()) == 40 and set(states) <= TERMINAL
    exactly_once.assert_charged_once(sql)


def test_a_direct_connection_keeps_its_prepared_statements(dsn: str) -> None:
    settings = Settings.load(env={}, dsn=dsn, listen=False)
    with Orchestrator(settings) as orch, orch.pool.connection() as conn:
        assert conn.prepare_threshold == 5  # psycopg's default: prepared after 5 runs


@pytest.fixture
def late_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread is held up between the Sync and the Flush psycopg sends as a pipeline ends,
    as a busy machine's scheduler may do."""
    fetch = _pipeline_base.BasePipeline._fetch_gen

    def held_up(self: Any, *, flush: bool) -> Any:
        if flush:
            time.sleep(0.02)
        return (yield from fetch(self, flush=flush))

    monkeypatch.setattr(_pipeline_base.BasePipeline, "_fetch_gen", held_up)


def test_a_claim_through_a_pooler_leaves_no_server_to_its_idle_connection(
        dsn: str, sql: Any, late_flush: None) -> None:
    """A Flush reaching PgBouncer after the COMMIT's answer linked a server to the idle pooled
    connection, and nothing released it: with every server so held, other clients waited
    query_wait_timeout (120 s). With one server, another client must still get it."""
    place_order(sql, "pinned")
    with private_dir("pgbouncer") as workdir, \
            servers.pgbouncer(dsn, workdir, pool_size=1) as pooled:
        settings = Settings.load(env={}, dsn=pooled, listen=False)
        with Orchestrator(settings) as orch:
            orch.store.use_workflows(list(database.test_registry().workflows.values()))
            assert [e.new_value for e in orch.store.claim(10)] == ["placed"]
            answered: list[Any] = []

            def other_client() -> None:
                with psycopg.connect(pooled, prepare_threshold=None) as conn:
                    answered.append(conn.execute("SELECT 1").fetchone())

            thread = threading.Thread(target=other_client, daemon=True)
            thread.start()
            thread.join(timeout=20)
            assert answered == [(1,)], "the pooler's only server stayed with an idle client"
