"""Global options go before or after the command; which handlers a command serves."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from orchestrator.cli.common import hoist_global_options, registry_from
from orchestrator.config import Settings
from orchestrator.errors import ConfigError


@pytest.mark.parametrize("given,expected", [
    (["run", "--log-level", "WARNING"], ["--log-level", "WARNING", "run"]),
    (["run", "--log-level=DEBUG", "--dsn", "x"], ["--log-level=DEBUG", "run", "--dsn", "x"]),
    (["--debug", "status", "--json"], ["--debug", "status", "--json"]),
    (["db", "url", "--debug"], ["--debug", "db", "url"]),
    (["--log-level", "INFO", "run", "--no-debug"], ["--log-level", "INFO", "--no-debug", "run"]),
    (["fire", "1", "--", "--debug"], ["fire", "1", "--", "--debug"]),
    (["run"], ["run"]),
    ([], []),
])
def test_global_options_after_the_command_move_before_it(given: list[str],
                                                         expected: list[str]) -> None:
    assert hoist_global_options(given) == expected


def test_a_handlers_package_in_the_working_directory_is_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "handlers"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from orchestrator import Workflow\n"
        "notes = Workflow('notes_here', table='notes', states=['a', 'b'], initial='a',\n"
        "                 terminal=['b'], transitions=[('go', 'a', 'b')])\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "handlers", raising=False)
    assert list(registry_from(Settings.load(env={})).workflows) == ["notes_here"]


def test_with_no_handlers_anywhere_the_error_says_what_to_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no handlers to serve: pass --handlers"):
        registry_from(Settings.load(env={}))


def test_the_checkout_serves_the_demo_under_its_installed_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    registry = registry_from(Settings.load(env={}))
    handlers = {spec.name for spec in registry.workflows["food_order"].handlers}
    assert all(name.startswith("orchestrator.demo.handlers.food_order.") for name in handlers)
