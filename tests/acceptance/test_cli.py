"""The `orchestrator` command as a user runs it: a subprocess, its exit code and its output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import gcpolicy
from orchestrator.db import LISTEN_APPLICATION_NAME
from tests.conftest import FAST
from tests.support import database
from tests.support.processes import dispatcher, finish, wait_for

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
        python: tuple[str, ...] = ("-m", "orchestrator")) -> subprocess.CompletedProcess[str]:
    """``orchestrator ARGS`` (``python``: what the interpreter runs to get there)."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("ORCHESTRATOR_") and k != "DATABASE_URL"}
    environ |= {f"ORCHESTRATOR_{k.upper()}": str(v) for k, v in FAST.items()} | (env or {})
    try:
        return subprocess.run([sys.executable, *python, *args], cwd=ROOT, env=environ,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # what it printed last says where it stuck
        said = (exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes)
                else exc.stderr or "")
        tail = "\n".join(said.splitlines()[-25:])
        raise AssertionError(f"orchestrator {' '.join(args[:2])} did not end within "
                             f"{timeout:g}s; its last words:\n{tail}") from None


def assert_one_line_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_the_commands() -> None:
    done = cli("--help")
    assert done.returncode == 0
    for command in ("migrate", "run", "db"):
        assert command in done.stdout


def test_help_never_shows_a_password_from_the_environment() -> None:
    secret = "postgresql://u:hunter2@db.example:5432/app"
    for args in (["--help"], ["run", "--help"], ["migrate", "--help"]):
        done = cli(*args, env={"ORCHESTRATOR_DSN": secret, "DATABASE_URL": secret})
        assert done.returncode == 0
        assert "hunter2" not in done.stdout + done.stderr


def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    done = cli("migrate", "--dsn", "postgresql://me:hunter2@127.0.0.1:1/shop")
    assert_one_line_error(done, "cannot connect to database shop at 127.0.0.1:1")
    assert "hunter2" not in done.stderr


def test_a_malformed_dsn_is_one_line() -> None:
    assert_one_line_error(cli("run", "--dsn", "host=x port"), "invalid DSN")


def test_an_unmigrated_database_says_what_to_do(admin_dsn: str) -> None:
    name = database.unique_name()
    bare = database.create_database(admin_dsn, name)
    try:
        done = cli("run", "--until-idle", "--dsn", bare)
    finally:
        database.drop_database(admin_dsn, name)
    assert_one_line_error(done, "run `orchestrator migrate`")


@pytest.mark.parametrize("args,fragment", [
    (["run", "--handlers", "no_such_module"], "cannot import handler module 'no_such_module'"),
    (["run", "--concurrency", "0"], "concurrency must be at least 1"),
])
def test_bad_settings_are_one_line(dsn: str, args: list[str], fragment: str) -> None:
    assert_one_line_error(cli(*args, "--dsn", dsn), fragment)


def test_global_options_work_after_the_command(dsn: str, sql: Any) -> None:
    sql("INSERT INTO jobs DEFAULT VALUES")
    done = cli("run", "--until-idle", "--handlers", "tests.support.jobs", "--dsn", dsn,
               "--log-level", "WARNING")
    assert done.returncode == 0, done.stderr
    assert sql("SELECT status FROM jobs") == [("finished",)]
    assert " INFO " not in done.stderr, done.stderr  # at INFO, each attempt logs a line
    failed = cli("status", "--dsn", "postgresql://nobody@127.0.0.1:1/x", "--debug")
    assert failed.returncode == 1 and "Traceback" in failed.stderr  # --debug took effect


def test_run_tunes_garbage_collection_once_started(dsn: str, sql: Any) -> None:
    # The process says, as it exits, how its collector was left (see orchestrator.gcpolicy).
    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: print('gc', gc.get_threshold()[0],"
             " gc.get_freeze_count() > 0, file=sys.stderr))\n"
             "from orchestrator.cli import main\n"
             "main()\n")
    sql("INSERT INTO jobs DEFAULT VALUES")
    done = cli("run", "--until-idle", "--handlers", "tests.support.jobs", "--dsn", dsn,
               python=("-c", probe))
    assert done.returncode == 0, done.stderr
    assert sql("SELECT status FROM jobs") == [("finished",)]
    assert f"gc {gcpolicy.YOUNG_THRESHOLD} True" in done.stderr, done.stderr
    untouched = cli("status", "--dsn", dsn, python=("-c", probe))  # only run tunes it
    assert f"gc {gcpolicy.YOUNG_THRESHOLD}" not in untouched.stderr, untouched.stderr


def test_a_bad_flag_value_is_a_usage_error() -> None:
    assert cli("run", "--concurrency", "many").returncode == 2


def test_migrate_then_run_until_idle(admin_dsn: str, sql: Any) -> None:
    name = database.unique_name()
    fresh = database.create_database(admin_dsn, name)
    try:
        # The demo is an application like any other: its tables come first, from seed.
        assert_one_line_error(cli("migrate", "--dsn", fresh),
                              "table public.orders does not exist")
        done = cli("seed", "--orders", "20", "--dsn", fresh)
        assert done.returncode == 0, done.stderr
        assert "placed 20 orders" in done.stdout
        done = cli("migrate", "--dsn", fresh)
        assert done.returncode == 0, done.stderr
        assert "workflows installed: food_order" in done.stdout
        done = cli("run", "--until-idle", "--dsn", fresh)
        assert done.returncode == 0, done.stderr
        import psycopg
        with psycopg.connect(fresh) as conn:
            states = dict(conn.execute("SELECT status, count(*) FROM orders GROUP BY 1").fetchall())
        assert sum(states.values()) == 20
        assert set(states) <= {"delivered", "rejected", "failed"}
    finally:
        database.drop_database(admin_dsn, name)


def test_sigterm_finishes_or_releases_work_in_hand_and_exits_0(dsn: str, sql: Any) -> None:
    sql("INSERT INTO jobs (sleep_s) SELECT 0.3 FROM generate_series(1, 30)")
    environ = {"ORCHESTRATOR_DSN": dsn, "ORCHESTRATOR_CONCURRENCY": "4",
               "ORCHESTRATOR_SHUTDOWN_GRACE_S": "5", "JOBS_EXEC_LOG": dsn}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", "--handlers", "tests.support.jobs"],
        cwd=ROOT, env=os.environ | environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    deadline = time.monotonic() + 60
    while sql("SELECT count(*) FROM executions")[0][0] < 4:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert sql("SELECT count(*) FROM orchestrator.events WHERE status = 'running'") == [(0,)]
    unfinished = sql("SELECT count(*) FROM jobs WHERE status <> 'finished'")[0][0]
    assert unfinished > 0, "the dispatcher finished everything before the signal arrived"
    assert cli("run", "--until-idle", "--handlers", "tests.support.jobs",
               env={"ORCHESTRATOR_DSN": dsn}).returncode == 0
    assert sql("SELECT count(*) FROM jobs WHERE status = 'finished'") == [(30,)]
    assert sql("SELECT count(*), count(DISTINCT job_id) FROM job_effects") == [(30, 30)]


def test_db_commands_manage_an_embedded_server_where_data_dir_says() -> None:
    with database.private_dir("cli") as data_dir:
        run_test_db_commands_manage_an_embedded_server(data_dir)


def run_test_db_commands_manage_an_embedded_server(data_dir: Path) -> None:
    """Every command with --data-dir (and no ORCHESTRATOR_DATA_DIR): each must use the
    server there, none the user's default one."""
    where = ["--data-dir", str(data_dir)]
    try:
        url = cli("db", "url", *where)
        assert url.returncode == 0, url.stderr
        uri = url.stdout.strip()
        assert uri == f"postgresql://postgres@/orchestrator?host={data_dir.resolve()}/pgdata"
        assert (data_dir / "pgdata" / "PG_VERSION").is_file()
        assert cli("seed", "--orders", "1", *where).returncode == 0
        assert cli("migrate", *where).returncode == 0
        import psycopg
        with psycopg.connect(uri) as conn:
            assert conn.execute("SELECT count(*) FROM orchestrator.workflows").fetchone() == (1,)
        status = cli("status", "--json", *where)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["workflows"][0]["states"]["placed"] == 1
    finally:
        assert cli("db", "stop", *where).returncode == 0
    import psycopg
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(uri, connect_timeout=3)


def test_debug_shows_the_stack_trace_of_an_error_before_or_after_the_command() -> None:
    for args in (["--debug", "run", "--dsn", "host=x port"],
                 ["run", "--dsn", "host=x port", "--debug"]):
        done = cli(*args)
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith("Traceback (most recent call last):"), done.stderr
        assert "ConfigError: invalid DSN" in done.stderr.strip().splitlines()[-1]


def test_no_listen_polls_without_a_listen_connection(dsn: str, sql: Any) -> None:
    (first,) = sql("INSERT INTO jobs DEFAULT VALUES RETURNING id")[0]
    proc = dispatcher(dsn, until_idle=False, flags=["--no-listen"])
    finished = "SELECT status = 'finished' FROM jobs WHERE id = %s"
    try:
        wait_for(lambda: sql(finished, (first,))[0][0] or proc.poll() is not None,
                 what="the first job to finish")
        assert sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                   (LISTEN_APPLICATION_NAME,)) == [(0,)]
        (second,) = sql("INSERT INTO jobs DEFAULT VALUES RETURNING id")[0]  # NOTIFY unheard
        wait_for(lambda: sql(finished, (second,))[0][0], timeout_s=30,
                 what="a poll to find the second job")
    finally:
        proc.send_signal(signal.SIGTERM)
        finish(proc)
