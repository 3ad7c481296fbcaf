"""The helpdesk's workflow, tested the way an application tests its own with the fixtures of
orchestrator.testing: a fresh database per test, a dispatcher run until idle, the path checked."""

from __future__ import annotations

import uuid

from orchestrator.testing import Harness, assert_path


def open_ticket(orchestrator: Harness, subject: str, topic: str = "hardware") -> uuid.UUID:
    rows = orchestrator.sql("INSERT INTO app.tickets (subject, topic) VALUES (%s, %s)"
                            " RETURNING id", (subject, topic))
    key: uuid.UUID = rows[0][0]
    return key


def test_a_ticket_is_triaged_assigned_and_its_agent_told(orchestrator: Harness) -> None:
    key = open_ticket(orchestrator, "Printer on fire")

    orchestrator.run_until_idle()

    assert_path(orchestrator, "ticket", key, ["new", "triaged", "assigned"])
    assert orchestrator.handlers_run("ticket", key) == ["triage", "assign", "notify"]
    assert orchestrator.sql("SELECT agent, message FROM app.notifications") == [
        ("hal", "Printer on fire")]


def test_an_urgent_ticket_gets_a_high_priority(orchestrator: Harness) -> None:
    key = open_ticket(orchestrator, "URGENT: invoice twice", topic="billing")
    orchestrator.run_until_idle()
    assert orchestrator.sql("SELECT priority, assignee FROM app.tickets WHERE id = %s",
                            (key,)) == [("high", "bea")]


def test_spam_is_rejected_before_anyone_is_told(orchestrator: Harness) -> None:
    key = open_ticket(orchestrator, "You won the lottery")
    orchestrator.run_until_idle()
    assert_path(orchestrator, "ticket", key, ["new", "rejected"])
    assert orchestrator.handlers_run("ticket", key) == ["triage"]
    assert orchestrator.sql("SELECT count(*) FROM app.notifications") == [(0,)]


def test_a_topic_nobody_covers_fails_after_its_attempts(orchestrator: Harness) -> None:
    key = open_ticket(orchestrator, "Espresso machine broken", topic="coffee")

    stats = orchestrator.run_until_idle(max_attempts=2)

    assert_path(orchestrator, "ticket", key, ["new", "triaged", "failed"])
    (dead,) = orchestrator.dead_events()
    assert dead["handler"] == "tests.plugin.helpdesk.assign"
    assert dead["attempts"] == 2
    assert "LookupError: no agent for 'coffee'" in dead["last_error"]
    assert (stats.retried, stats.dead) == (1, 1)


def test_a_ticket_resolved_by_hand_ends_its_path_there(orchestrator: Harness) -> None:
    key = open_ticket(orchestrator, "Mouse squeaks")
    orchestrator.run_until_idle()
    orchestrator.sql("UPDATE app.tickets SET status = 'resolved' WHERE id = %s", (key,))
    orchestrator.run_until_idle()
    assert_path(orchestrator, "ticket", key, ["new", "triaged", "assigned", "resolved"])


def test_each_test_starts_from_the_schema_alone(orchestrator: Harness) -> None:
    assert orchestrator.sql("SELECT count(*) FROM app.tickets") == [(0,)]
    assert orchestrator.sql("SELECT count(*) FROM orchestrator.events") == [(0,)]
    assert orchestrator.sql("SELECT count(*) FROM app.agents") == [(3,)]
