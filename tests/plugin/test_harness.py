"""What the plugin promises beyond the helpdesk's own tests: readable failures, a run that
gives up, templates built once, the schema given as a function, settings per run."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from orchestrator import load_registry
from orchestrator.testing import FAST_SETTINGS, Harness, Schema, _Templates, assert_path
from tests.plugin.test_helpdesk import open_ticket

SCHEMA_FILE = Path(__file__).with_name("helpdesk.sql")


def test_a_wrong_path_shows_both_paths_the_handlers_and_the_dead_event(
        orchestrator: Harness) -> None:
    key = open_ticket(orchestrator, "Espresso machine broken", topic="coffee")
    orchestrator.run_until_idle(max_attempts=2)

    with pytest.raises(AssertionError) as failure:
        assert_path(orchestrator, "ticket", key, ["new", "triaged", "assigned"])

    message = str(failure.value)
    assert message.startswith(f"row {key} of workflow 'ticket' took another path\n")
    assert "  expected: new -> triaged -> assigned\n" in message
    assert "  actual:   new -> triaged -> failed\n" in message
    assert "  handlers run: triage, assign\n" in message
    assert re.search(r"\n  dead event \d+ \(status: new -> triaged\): 2 attempts, handler "
                     r"tests\.plugin\.helpdesk\.assign, last error: LookupError: no agent for "
                     r"'coffee' \(attempt 2 of 2\)$", message), message


def test_a_row_with_no_events_has_an_empty_path(orchestrator: Harness) -> None:
    assert orchestrator.path("ticket", "3f6c2b1e-0000-4000-8000-000000000000") == []
    with pytest.raises(AssertionError, match=r"actual:   \(no events: no such row\?\)"):
        assert_path(orchestrator, "ticket", 42, ["new"])


def test_a_run_that_does_not_go_idle_fails_listing_the_open_work(orchestrator: Harness) -> None:
    key = open_ticket(orchestrator, "Contract review", topic="legal")  # its agent is on leave

    with pytest.raises(AssertionError) as failure:
        orchestrator.run_until_idle(timeout_s=0.5)

    message = str(failure.value)
    assert message.startswith("work still open after 0.5 s:\n")
    assert re.search(rf"\n  pending event \d+ of row {key} \(status: new -> triaged\): 1 "
                     r"attempt, due in 3\d{3}\.\d s, handler tests\.plugin\.helpdesk\.assign, "
                     r"last error: Retry", message), message
    assert orchestrator.open_events()[0]["row_key"] == str(key)


def test_settings_come_from_the_fixture_and_a_run_may_override_them(
        orchestrator: Harness) -> None:
    assert orchestrator.settings.poll_interval_s == FAST_SETTINGS["poll_interval_s"]
    assert orchestrator.settings.dsn == orchestrator.dsn
    open_ticket(orchestrator, "Espresso machine broken", topic="coffee")
    assert orchestrator.run_until_idle(max_attempts=1).dead == 1
    assert orchestrator.settings.max_attempts == 5  # the override was for that run only


def test_one_template_serves_every_registry_of_the_same_workflows(
        _orchestrator_templates: _Templates) -> None:
    get = _orchestrator_templates.get
    first = get(SCHEMA_FILE, load_registry("tests.plugin.helpdesk"))
    assert get(SCHEMA_FILE, load_registry("tests.plugin.helpdesk")) == first


def create_helpdesk_tables(dsn: str) -> None:
    """The application's schema given as a function, as one that runs its own migrations."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_FILE.read_text())


class TestASchemaFunction:
    @pytest.fixture
    def orchestrator_schema(self) -> Schema:
        return create_helpdesk_tables

    def test_is_given_the_new_database_before_the_orchestrator_schema(
            self, orchestrator: Harness) -> None:
        key = open_ticket(orchestrator, "Printer on fire")
        orchestrator.run_until_idle()
        assert orchestrator.path("ticket", key) == ["new", "triaged", "assigned"]
