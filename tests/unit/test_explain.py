import pytest

from orchestrator.web.explain import duration, why


@pytest.mark.parametrize("seconds,text", [(0.42, "0.4s"), (42, "42s"), (185, "3m 05s"),
                                          (7800, "2h 10m"), (3 * 86400 + 4 * 3600, "3d 4h"),
                                          (None, "?")])
def test_duration_reads_as_a_person_says_it(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def row(**fields: object) -> dict[str, object]:
    return {"event_id": 1, "status": "done", "outcome": "noop", "handler": "h.assign_agent",
            "attempts": 1, "last_error": None, "run_in_s": None, "deadline_to": None,
            "deadline_in_s": None} | fields


def test_why_a_row_is_where_it_is() -> None:
    assert why(row()) == "assign_agent did nothing: waits for another change"
    assert why(row(status="pending", attempts=2, last_error="boom", run_in_s=3.0)) == \
        "attempt 3 in 3.0s, after: boom"
    assert why(row(status="dead", attempts=4, last_error="card expired")) == \
        "dead after 4 attempt(s): card expired"
    assert why(row(status="running", attempts=1)) == "assign_agent running (attempt 1)"
    assert why(row(event_id=None)).startswith("no event recorded")
    assert why(row(deadline_to="cancelled", deadline_in_s=1500)).endswith(
        "; moves to cancelled in 25m 00s if still here")
