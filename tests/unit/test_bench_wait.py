"""The bench's wait for a case to finish: it stops at once when a dispatcher is gone."""

from __future__ import annotations

import pytest

from orchestrator.bench.case import wait_until
from orchestrator.bench.db import BenchError


def test_a_wait_ends_with_the_error_of_a_dispatcher_gone_not_at_the_stall_timeout() -> None:
    polls: list[int] = []

    def alive() -> None:
        if len(polls) == 3:
            raise BenchError("dispatcher 0 exited with 1: boom")

    def progress() -> tuple[bool, object]:
        polls.append(1)
        return False, len(polls)  # moving, never finished

    with pytest.raises(BenchError, match="dispatcher 0 exited with 1: boom"):
        wait_until(progress, what="drain", poll_s=0.001, stall_s=3600, alive=alive)
    assert len(polls) == 3


def test_a_wait_without_a_watch_still_ends_when_progress_stalls() -> None:
    with pytest.raises(BenchError, match="drain: stuck at 7"):
        wait_until(lambda: (False, 7), what="drain", poll_s=0.001, stall_s=0.01)
