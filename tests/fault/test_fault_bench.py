"""The fault bench, scaled down: every kind of fault once, and still nothing lost or doubled."""

from __future__ import annotations

import pytest

from bench import faults

pytestmark = pytest.mark.fault


def test_a_small_load_survives_every_kind_of_fault() -> None:
    report = faults.run(orders=150, dispatchers=2, every_s=1.0, seed=3, limit_s=300,
                        min_faults=len(faults.Faults.SCHEDULE))
    assert set(report.faults) == set(faults.Faults.SCHEDULE)
    assert report.not_terminal == 0
    assert report.applied_twice == 0
    assert report.charged_twice == 0
    assert len(report.recovery_s) >= 2  # at least one fast and one immediate restart
    assert report.transitions > 150
