"""The dashboard's figures against a real PostgreSQL: rows that wait, and the pulse."""

from __future__ import annotations

from typing import Any

from orchestrator.app import Orchestrator
from orchestrator.config import Settings
from orchestrator.web.pulse import Pulse
from tests.support.tickets import tickets


def test_rows_in_states_say_why_and_since_when(settings: Settings, sql: Any) -> None:
    sql("INSERT INTO tickets DEFAULT VALUES")
    (due,) = sql("SELECT run_after FROM orchestrator.events WHERE op = 'TIMER'")[0]
    with Orchestrator(settings) as orch:
        (before,) = sql("SELECT clock_timestamp()")[0]
        (row,) = orch.reports.rows_in_states(tickets, ["open"])
        (after,) = sql("SELECT clock_timestamp()")[0]
        assert row["status"] == "pending" and row["age_s"] >= 0
        # The time left is the deadline less the moment of the read, however long that took.
        assert row["deadline_to"] == "escalated"
        assert (due - after).total_seconds() - 1e-3 <= row["deadline_in_s"] \
            <= (due - before).total_seconds() + 1e-3
        assert orch.reports.rows_in_states(tickets, ["open"], older_than_s=3600) == []
        assert orch.reports.stuck_counts(tickets, ["open", "answered"], 0.0) == {"open": 1}
        assert orch.reports.stuck_counts(tickets, ["open"], 3600) == {}


def test_the_pulse_counts_what_finished_between_samples(settings: Settings, sql: Any,
                                                        run_idle: Any) -> None:
    with Orchestrator(settings) as orch:
        pulse = Pulse(orch.reports, stuck_after_s=60)
        pulse.sample()
        first = {w["name"]: w for w in pulse.snapshot()["workflows"]}
        assert first["jobs"]["throughput_per_s"] is None  # no floor yet: measuring
        sql("INSERT INTO jobs (fail_times) SELECT 0 FROM generate_series(1, 5)")
        sql("INSERT INTO jobs (fail_times) VALUES (9)")
        run_idle()
        pulse.sample()
        jobs = {w["name"]: w for w in pulse.snapshot()["workflows"]}["jobs"]
    assert jobs["states"] == {"new": 0, "working": 0, "finished": 5, "failed": 1}
    assert jobs["events"]["dead"] == 1 and jobs["events"]["due"] == 0
    assert jobs["throughput_per_s"] > 0 and jobs["series"][-1][1] > 0
    assert jobs["lag"] is not None and jobs["lag"]["max"] >= jobs["lag"]["p50"] >= 0
