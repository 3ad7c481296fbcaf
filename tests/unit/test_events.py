from datetime import UTC, datetime

import pytest

from orchestrator.db import redact
from orchestrator.errors import BadOutcome
from orchestrator.events import Event, Next, as_outcome


def test_outcomes_accept_none_state_names_and_next() -> None:
    assert as_outcome(None) is None
    assert as_outcome("paid") == Next("paid")
    assert as_outcome(Next("paid", {"x": 1})).values == {"x": 1}  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [42, {"state": "paid"}, ["paid"], b"paid"])
def test_anything_else_is_a_bad_outcome(bad: object) -> None:
    with pytest.raises(BadOutcome, match="expected None, a state name or Next"):
        as_outcome(bad)


def test_event_is_immutable_and_knows_what_changed() -> None:
    event = Event(7, "wf", "3", "status", "UPDATE", "a", "b", {"status": "a", "n": 1},
                  {"status": "b", "n": 1}, 2, datetime.now(UTC))
    assert event.changed == {"status"}
    assert event.idempotency_key == "wf:7"
    with pytest.raises(AttributeError):
        event.attempt = 3  # type: ignore[misc]


@pytest.mark.parametrize("text", [
    "postgresql://user:s3cret@host:5432/db",
    "host=h user=u password=s3cret dbname=d",
    "host=h password='s3 cret' dbname=d",
    "postgresql://user:s3@cr@et@host:5432/db",
    "error: cannot connect to postgresql://user:s3/cr@et@host/db?sslmode=require: refused",
    "invalid DSN 'postgres://user:s3:cr@et@host/db': missing",
])
def test_redact_hides_passwords(text: str) -> None:
    assert "s3" not in redact(text) and "cr" not in redact(text) and "et@" not in redact(text)
    assert "***" in redact(text)


def test_redact_keeps_what_is_not_a_password() -> None:
    assert redact("postgresql://user:pw@db.example:5432/shop?sslmode=require and then") == \
        "postgresql://user:***@db.example:5432/shop?sslmode=require and then"
    assert redact("postgresql://db.example:5432/shop") == "postgresql://db.example:5432/shop"
