"""When the Writer sends a batch: any batch while nothing is being written, only full ones while
a write is under way and a thread is free, none while every thread writes."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.outcomes import Result
from orchestrator.writer import Writer


class HeldStore:
    """Its finish never returns in these tests: the writer threads stay busy."""

    def finish(self, results: list[Result], **_: Any) -> None:
        raise AssertionError("not reached: the tests never start a thread's write")


def writer(in_flight: int) -> Writer:
    w = Writer(HeldStore(), lambda written: None, threads=2, full_batch=8)  # type: ignore[arg-type]
    w.in_flight = in_flight
    return w


@pytest.mark.parametrize(("in_flight", "results", "takes"), [
    (0, 0, False), (0, 1, True),      # nothing being written: any batch goes at once
    (1, 7, False), (1, 8, True),      # one being written: the next waits to be full
    (2, 100, False),                  # every thread writing: it waits however big it grows
])
def test_a_batch_goes_when_nothing_is_written_or_when_it_is_full_and_a_thread_is_free(
        in_flight: int, results: int, takes: bool) -> None:
    assert writer(in_flight).takes(results) is takes


def test_a_write_while_every_thread_writes_is_refused() -> None:
    with pytest.raises(RuntimeError, match="every thread is writing"):
        writer(2).write([])


def test_a_written_batch_frees_its_thread() -> None:
    w = writer(2)
    w.taken()
    assert w.takes(8) and w.busy
