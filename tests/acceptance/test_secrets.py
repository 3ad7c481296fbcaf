"""Secrets never appear in logs, errors or --help: DSN passwords, tokens from a password
command, remote signing secrets and function keys in a remote handler's URL."""

from __future__ import annotations

import subprocess

from psycopg import conninfo
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.acceptance.test_cli import assert_one_line_error, cli
from tests.support import http, servers

ENV = {"ORCHESTRATOR_REMOTE_SECRETS": "sign-SECRET",
       "ORCHESTRATOR_PASSWORD_COMMAND": "echo cmd-SECRET",
       "ORCHESTRATOR_DSN": "postgresql://u:dsn-SECRET@db.example/app",
       "DATABASE_URL": "postgresql://u:url-SECRET@db.example/app"}


def assert_no_secret(done: subprocess.CompletedProcess[str]) -> None:
    assert "SECRET" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_help_shows_no_secret_from_the_environment() -> None:
    for args in (["run", "--help"], ["migrate", "--help"]):
        done = cli(*args, env=ENV)
        assert done.returncode == 0
        assert_no_secret(done)


def test_a_dispatcher_logging_everything_shows_no_secret(
        scram_server: servers.PostgresServer) -> None:
    scram_server.sql("CREATE DATABASE vault")
    scram_server.sql("ALTER ROLE postgres PASSWORD 'admin-SECRET'")
    scram_server.sql("ALTER ROLE rotating PASSWORD 'dsn-SECRET'")
    port = scram_server.port
    with_password = f"postgresql://rotating:dsn-SECRET@127.0.0.1:{port}/vault"
    with http.serve(failing_function()) as url:
        # Pick-up is served by a failing function, behind a function key in its URL.
        remote = {"FOOD_ORDER_PICK_UP_URL": f"{url}/pick-up?code=fnkey-SECRET",
                  "ORCHESTRATOR_REMOTE_SECRETS": "sign-SECRET"}
        assert cli("seed", "--orders", "0", "--dsn", scram_server.admin_dsn("vault"),
                   env=remote).returncode == 0  # the demo's tables, which migrate needs
        done = cli("--log-level", "DEBUG", "migrate", "--dsn", scram_server.tcp_dsn("vault"),
                   "--password-command", "echo admin-SECRET", env=remote)
        assert done.returncode == 0, done.stderr
        assert_no_secret(done)
        seeded = cli("seed", "--orders", "10", "--dsn", scram_server.admin_dsn("vault"))
        assert seeded.returncode == 0, seeded.stderr
        done = cli("--log-level", "DEBUG", "run", "--until-idle", "--dsn", with_password,
                   env=remote)
    assert done.returncode == 0, done.stderr
    assert "answered HTTP 500: down" in done.stderr
    assert_no_secret(done)
    recorded = scram_server.sql(
        "SELECT string_agg(coalesce(last_error, ''), ' ') FROM orchestrator.events", "vault")
    assert "answered HTTP 500: down" in recorded[0][0]
    assert "SECRET" not in recorded[0][0]
    assert scram_server.sql("SELECT count(*) FROM orchestrator.event_errors"
                            " WHERE error LIKE '%%SECRET%%'", "vault") == [(0,)]
    without_password = conninfo.make_conninfo(scram_server.tcp_dsn("vault", user="rotating"))
    for env in ({"ORCHESTRATOR_PASSWORD_COMMAND": "echo dsn-SECRET"},
                {"ORCHESTRATOR_PASSWORD_PROVIDER": "tests.support.tokens:from_env",
                 "ORCHESTRATOR_TEST_TOKEN": "dsn-SECRET"}):
        done = cli("--log-level", "DEBUG", "status", "--dsn", without_password, env=env)
        assert done.returncode == 0, done.stderr
        assert_no_secret(done)


def failing_function() -> Starlette:
    async def down(request: Request) -> PlainTextResponse:
        return PlainTextResponse("down", status_code=500)

    return Starlette(routes=[Route("/pick-up", down, methods=["POST"])])


def test_errors_show_no_password(scram_server: servers.PostgresServer) -> None:
    wrong = f"postgresql://rotating:wrong-SECRET@127.0.0.1:{scram_server.port}/shop"
    done = cli("migrate", "--dsn", wrong)
    assert_one_line_error(done, "password authentication failed")
    assert_no_secret(done)
    done = cli("status", "--dsn", f"host=127.0.0.1 port={scram_server.port} dbname=shop"
               " user=rotating password='wrong SECRET'")
    assert_one_line_error(done, "password authentication failed")
    assert_no_secret(done)
    done = cli("status", "--dsn", scram_server.tcp_dsn("shop", user="rotating"),
               env={"ORCHESTRATOR_PASSWORD_COMMAND": "echo cmd-SECRET; echo denied >&2; exit 2"})
    assert_one_line_error(done, "password command failed (exit 2): denied")
    assert_no_secret(done)
