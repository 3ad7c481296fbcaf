"""The fault bench, scaled down: every kind of fault once, and still nothing lost or doubled."""

from __future__ import annotations

import pytest

from bench import faults

pytestmark = pytest.mark.fault


def test_a_small_load_survives_every_kind_of_fault() -> None:
    report = faults.run(orders=150, dispatchers=2, every_s=1.0, seed=3, limit_s=200,
                        min_faults=len(faults.Faults.SCHEDULE))
    assert set(report.faults) == set(faults.Faults.SCHEDULE)
    assert report.not_terminal == 0
    # Counted where a double would show (bench.witness): state writes, payments and handler
    # effects in tables with no UNIQUE, handler calls recorded outside their transactions.
    assert report.applied_twice == 0
    assert report.charged_twice == 0
    assert report.charges_not_once == 0
    assert report.effects_not_once == 0
    assert report.unexecuted == 0
    assert report.executions >= report.transitions > 150  # handlers ran at least once
    assert len(report.recovery_s) >= 2  # at least one fast and one immediate restart
    assert report.ok
