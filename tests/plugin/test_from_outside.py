"""The plugin as an application meets it: pytest run in a subprocess on a project of its own,
with the plugin loaded by name as its pytest11 entry point loads it, ``filterwarnings = error``
and strict markers and config."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

SHOP = '''
from orchestrator import Event, Workflow

order = Workflow(
    "order", table="shop.orders", states=["placed", "paid", "shipped", "cancelled"],
    initial="placed", terminal=["shipped", "cancelled"],
    transitions=[("pay", "placed", "paid"), ("ship", "paid", "shipped"),
                 ("cancel", "placed", "cancelled")],
)

@order.on_enter("placed")
def charge(event: Event) -> str:
    return "paid" if event.new_row["total_cents"] > 0 else "cancelled"

@order.on("placed", "paid")
def ship(event: Event) -> str:
    return "shipped"
'''

CONFTEST = '''
import pytest

@pytest.fixture
def orchestrator_schema() -> str:
    return """
        CREATE SCHEMA shop;
        CREATE TABLE shop.orders (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            total_cents integer NOT NULL,
            status text NOT NULL DEFAULT 'placed');
    """
'''

TEST_SHOP = '''
from orchestrator.testing import assert_path

def place(orchestrator, total_cents):
    return orchestrator.sql("INSERT INTO shop.orders (total_cents) VALUES (%s) RETURNING id",
                            (total_cents,))[0][0]

def test_an_order_is_paid_and_shipped(orchestrator):
    key = place(orchestrator, 500)
    orchestrator.run_until_idle()
    assert_path(orchestrator, "order", key, ["placed", "paid", "shipped"])
    print("test database:", orchestrator.dsn)
    print("data directory:", orchestrator.sql("SHOW data_directory")[0][0])

def test_a_free_order_is_shipped_too(orchestrator):  # wrong: it is cancelled
    key = place(orchestrator, 0)
    orchestrator.run_until_idle()
    assert_path(orchestrator, "order", key, ["placed", "paid", "shipped"])
'''


def plugin_entry_point_installed() -> bool:
    return any(ep.value == "orchestrator.testing"
               for ep in importlib.metadata.entry_points(group="pytest11"))


def make_project(root: Path, *, handlers: str | None = "shop") -> Path:
    (root / "shop.py").write_text(SHOP)
    (root / "conftest.py").write_text(CONFTEST)
    (root / "test_shop.py").write_text(TEST_SHOP)
    # Until the package declares its entry point, name the plugin; with it, pytest finds it.
    load = "" if plugin_entry_point_installed() else " -p orchestrator.testing"
    ini = ["[pytest]", f"addopts = -ra --strict-markers --strict-config -p no:cacheprovider{load}",
           "filterwarnings = error"]
    if handlers:
        ini.append(f"orchestrator_handlers = {handlers}")
    (root / "pytest.ini").write_text("\n".join(ini) + "\n")
    return root


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "ORCHESTRATOR_"))}
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=240, check=False)


def databases(server_dsn: str) -> set[str]:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        return {name for (name,) in conn.execute("SELECT datname FROM pg_database")}


def test_a_project_tests_its_workflows_on_a_given_server(
        tmp_path: Path, orchestrator_server: str) -> None:
    before = databases(orchestrator_server)

    done = run_pytest(make_project(tmp_path), "-s", "--orchestrator-dsn", orchestrator_server)

    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "1 failed, 1 passed" in out, out
    # The failing assert_path points at the test's own line, and says what happened instead.
    failing_line = '>       assert_path(orchestrator, "order", key, ["placed", "paid", "shipped"])'
    assert failing_line in out, out
    assert "E       AssertionError: row 1 of workflow 'order' took another path\n" \
           "E         expected: placed -> paid -> shipped\n" \
           "E         actual:   placed -> cancelled\n" \
           "E         handlers run: charge\n" in out, out
    assert "orchestrator/testing.py" not in out, out
    # The test databases were on the given server, and are gone.
    used = conninfo.conninfo_to_dict(out.split("test database: ")[1].splitlines()[0])
    given = conninfo.conninfo_to_dict(orchestrator_server)
    assert (used.get("host"), used.get("port")) == (given.get("host"), given.get("port"))
    assert databases(orchestrator_server) == before


def test_a_project_that_names_no_workflows_is_told_how(
        tmp_path: Path, orchestrator_server: str) -> None:
    project = make_project(tmp_path, handlers=None)
    done = run_pytest(project, "--orchestrator-dsn", orchestrator_server, "-k", "paid_and")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "orchestrator.testing has no workflows to test: override the orchestrator_registry " \
           "fixture, or set orchestrator_handlers = <module> in the pytest configuration" \
           in done.stdout, done.stdout


@pytest.mark.slow
def test_with_no_server_given_an_embedded_one_serves_the_session_and_goes(
        tmp_path: Path) -> None:
    done = run_pytest(make_project(tmp_path), "-s", "-k", "paid_and")
    assert done.returncode == 0, done.stdout + done.stderr
    data_dir = Path(done.stdout.split("data directory: ")[1].splitlines()[0])
    assert data_dir.name == "pg" and data_dir.parent.name.startswith("orchestrator-test-")
    assert not data_dir.parent.exists()
