"""Short-lived credentials against a real PostgreSQL with password authentication (SCRAM),
a server of the tests' own (``scram_server`` in conftest.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestrator.app import Orchestrator
from orchestrator.config import Settings
from orchestrator.db import LISTEN_APPLICATION_NAME
from orchestrator.errors import DatabaseUnavailable
from tests.acceptance.test_cli import ROOT, cli
from tests.acceptance.test_metrics import scrape, total
from tests.conftest import FAST
from tests.support import exactly_once, servers
from tests.support.database import private_dir
from tests.support.processes import Output, wait_for

TERMINAL = ("delivered", "rejected", "cancelled", "failed")


def wait_until(server: servers.PostgresServer, query: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not server.sql(query, "shop")[0][0]:
        assert time.monotonic() < deadline, f"not true within {timeout_s}s: {query}"
        time.sleep(0.05)


def seed(server: servers.PostgresServer, orders: int, seed_value: int) -> None:
    done = cli("seed", "--orders", str(orders), "--seed", str(seed_value),
               "--dsn", server.admin_dsn("shop"))
    assert done.returncode == 0, done.stderr


def all_terminal(count: int) -> str:
    return (f"SELECT count(*) = {count} FROM orders"
            f" WHERE status IN ('delivered', 'rejected', 'cancelled', 'failed')")


def test_a_password_rotated_while_dispatchers_run_loses_no_work(
        scram_server: servers.PostgresServer) -> None:
    with private_dir("secret") as workdir:
        rotate_while_dispatching(scram_server, workdir / "password")


def rotate_while_dispatching(server: servers.PostgresServer, secret: Path) -> None:
    server.sql("ALTER ROLE rotating PASSWORD 'pw-one-SECRET'")
    secret.write_text("pw-one-SECRET\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    environ |= {f"ORCHESTRATOR_{k.upper()}": str(v) for k, v in FAST.items()}
    environ |= {"ORCHESTRATOR_DSN": server.tcp_dsn("shop", user="rotating"),
                "ORCHESTRATOR_PASSWORD_COMMAND": f"cat {secret}"}
    argv = [sys.executable, "-m", "orchestrator", "run", "--concurrency", "4"]
    procs = [subprocess.Popen(argv, cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        seed(server, 10, 1)
        wait_until(server, all_terminal(10))
        seed(server, 20, 2)
        wait_until(server, "SELECT count(*) > 0 FROM orders WHERE id > 10 AND status <> 'placed'")
        # Rotate: the secret store first, then the server; then drop every session, as a
        # failover would, so the dispatchers must reconnect (pool and LISTEN alike).
        secret.write_text("pw-two-SECRET\n")
        server.sql("ALTER ROLE rotating PASSWORD 'pw-two-SECRET'")
        server.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                   " WHERE usename = 'rotating'")
        seed(server, 5, 3)
        wait_until(server, all_terminal(35))
        # Both LISTEN connections are back too.
        wait_until(server, "SELECT count(*) = 2 FROM pg_stat_activity WHERE usename = 'rotating'"
                           f" AND application_name = '{LISTEN_APPLICATION_NAME}'")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=60) for proc in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
        assert "SECRET" not in stderr
    assert server.sql("SELECT count(*) FROM orchestrator.events"
                      " WHERE status IN ('pending', 'running')", "shop") == [(0,)]
    exactly_once.assert_charged_once(lambda query, params=None: server.sql(query, "shop"))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(server.tcp_dsn("shop", user="rotating", password="pw-one-SECRET"))


def test_a_password_provider_is_asked_for_every_new_connection(
        scram_server: servers.PostgresServer) -> None:
    calls: list[dict[str, Any]] = []

    def token(params: Mapping[str, Any]) -> str:
        calls.append(dict(params))
        return "pw-two-SECRET"

    scram_server.sql("ALTER ROLE rotating PASSWORD 'pw-two-SECRET'")
    settings = Settings.load(env={}, dsn=scram_server.tcp_dsn("shop", user="rotating"),
                             pool_size=2)
    orch = Orchestrator(settings, password=token)
    with orch, orch.pool.connection() as first, orch.pool.connection() as second:
        assert first.execute("SELECT current_user").fetchone() == ("rotating",)
        assert second.info.backend_pid != first.info.backend_pid
        opened = orch.pool.get_stats()["connections_num"]
    assert len(calls) == 1 + opened  # the direct check on open, then each pooled connection
    assert all(c["host"] == "127.0.0.1" and c["port"] == str(scram_server.port)
               and c["user"] == "rotating" and c["dbname"] == "shop" and "password" not in c
               for c in calls)


def test_a_wrong_token_fails_in_one_line_without_the_token(
        scram_server: servers.PostgresServer) -> None:
    settings = Settings.load(env={}, dsn=scram_server.tcp_dsn("shop", user="rotating"))
    with pytest.raises(DatabaseUnavailable) as caught, \
            Orchestrator(settings, password=lambda params: "wrong-SECRET"):
        pass
    assert "password authentication failed" in str(caught.value)
    assert "SECRET" not in str(caught.value)


def test_pool_and_password_metrics_move_with_a_provider_that_fails_now_and_then(
        scram_server: servers.PostgresServer) -> None:
    """Connections recycled every half second (--pool-max-lifetime-s) ask the provider again
    and again; every third call fails. The work still completes, and the metrics and the log
    say how the pool and the provider fared."""
    scram_server.sql("ALTER ROLE rotating PASSWORD 'pw-flaky-SECRET'")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    environ |= {f"ORCHESTRATOR_{k.upper()}": str(v) for k, v in FAST.items()}
    environ |= {"ORCHESTRATOR_DSN": scram_server.tcp_dsn("shop", user="rotating"),
                "ORCHESTRATOR_PASSWORD_PROVIDER": "tests.support.flaky_password:token",
                "FLAKY_PASSWORD": "pw-flaky-SECRET"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--log-level", "INFO", "run", "--metrics-port",
         "0", "--pool-size", "3", "--concurrency", "4", "--pool-max-lifetime-s", "0.5",
         "--pool-max-idle-s", "30"], cwd=ROOT, env=environ, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    output = Output(proc)
    try:
        url = output.wait_for(r"Prometheus metrics on (http://[\d.]+:\d+/metrics)",
                              what="the metrics address in the log")
        first: Any = None

        def scraped() -> bool:
            nonlocal first
            first = scrape(url)
            return first is not None
        wait_for(scraped, what="the metrics endpoint")
        assert total(first, "orchestrator_pool_max") == 3
        assert total(first, "orchestrator_password_provider_seconds_count") >= 2
        orders = scram_server.sql("SELECT count(*) FROM orders", "shop")[0][0]  # earlier tests'
        for seed_value in (1, 2):  # two waves, so the run outlasts several lifetimes
            seed(scram_server, 15, seed_value)
            orders += 15
            wait_until(scram_server, all_terminal(orders))
        later: Any = None

        def moved() -> bool:
            nonlocal later
            later = scrape(url)
            return later is not None and \
                total(later, "orchestrator_password_provider_failures_total") >= 2 and \
                total(later, "orchestrator_pool_connect_seconds_count") > 3
        wait_for(moved, timeout_s=60, what="connections recycled and the provider failing")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        text = output.close()
    assert proc.returncode == 0, text
    calls = total(later, "orchestrator_password_provider_seconds_count")
    failures = total(later, "orchestrator_password_provider_failures_total")
    assert calls > total(first, "orchestrator_password_provider_seconds_count")
    assert failures == calls // 3  # every third call, and no other failure
    assert total(later, "orchestrator_password_provider_seconds_sum") > 0
    assert total(later, "orchestrator_pool_connect_seconds_sum") > 0
    assert 1 <= total(later, "orchestrator_pool_size") <= 3
    assert total(later, "orchestrator_pool_requests_total") > \
        total(first, "orchestrator_pool_requests_total")
    assert total(later, "orchestrator_pool_connection_errors_total") == 0
    assert scram_server.sql("SELECT count(*) FROM orchestrator.events"
                            " WHERE status IN ('pending', 'running')", "shop") == [(0,)]
    assert re.search(r"WARNING orchestrator\.db: no password for a new pooled connection \(the "
                     r"pool tries again\): password provider failed: TokenServiceBusy: token "
                     r"service busy \(call \d+\)", text), text
    summary = re.search(r"connections: pool opened (\d+) .*; password provider: (\d+) calls, "
                        r"(\d+) failed", text)
    assert summary and int(summary[1]) > 3 and int(summary[3]) >= failures, text
    assert "SECRET" not in text
