"""The write-back, on threads of its own.

The dispatcher's loop hands batches of results to the Writer and goes on claiming and starting
handlers while the batches' transactions run and commit on other pooled connections; what a
write recorded comes back through the loop's inbox as a Written message. A few batches may be
written at once (the server runs each write-back statement on one backend: one at a time
would cap a dispatcher at what one backend does); results that arrive while every thread
writes wait for the next batch (group commit). Batches in flight at once never hold two
events of a row, since a row's next event is claimed only once its last one's write has
committed (the hand-over claims it inside that very write).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.config import Settings
from orchestrator.outcomes import FinishReport, Result
from orchestrator.verbs import EventQueue


@dataclass(frozen=True, slots=True)
class Written:
    """A batch handed to the Writer was written (``report``), or failed with ``error``: the
    database went away (DatabaseUnavailable, the batch is to be written again once it is back)
    or something unexpected that the loop raises."""

    batch: list[Result]
    report: FinishReport | None = None
    error: BaseException | None = None


class Writer:
    """Writes batches of results with ``store.finish`` on its own threads, at most ``threads``
    batches at once (each on its own pooled connection), and posts a Written for each. A
    batch counts as in flight from ``write`` until the loop takes its Written (``taken``);
    the threads start with the first batch."""

    def __init__(self, store: EventQueue, post: Callable[[Written], None], *,
                 threads: int = 1, full_batch: int = 1) -> None:
        self._store = store
        self._post = post
        self._batches: queue.SimpleQueue[list[Result] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._size = threads
        self._full_batch = full_batch
        self.in_flight = 0

    @property
    def busy(self) -> bool:
        """Some batch is being written."""
        return self.in_flight > 0

    def takes(self, results: int) -> bool:
        """Whether a batch of ``results`` should go now: any batch while nothing is being
        written, a full one (``full_batch``) while a thread is free, else it waits and grows:
        each commit costs the server the same, so a busy server is not sent small ones."""
        if not self.in_flight:
            return results > 0
        return self.in_flight < self._size and results >= self._full_batch

    def write(self, batch: list[Result]) -> None:
        """Write ``batch`` on one of the writer's threads. Raises RuntimeError while every
        thread is writing."""
        if self.in_flight >= self._size:
            raise RuntimeError("Writer.write while every thread is writing a batch")
        self.in_flight += 1
        if not self._threads:
            self._threads = [threading.Thread(target=self._run, daemon=True,
                                              name=f"orchestrator-writer-{n}")
                             for n in range(self._size)]
            for thread in self._threads:
                thread.start()
        self._batches.put(batch)

    def taken(self) -> None:
        """The loop has taken a batch's Written: another batch may go."""
        self.in_flight -= 1

    def stop(self) -> None:
        """End the threads once the batches in hand are written (wait for them)."""
        for _ in self._threads:
            self._batches.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _run(self) -> None:
        while (batch := self._batches.get()) is not None:
            try:
                written = Written(batch, report=self._store.finish(batch))
            except BaseException as exc:  # the loop decides what it means
                written = Written(batch, error=exc)
            self._post(written)


def writer_for(settings: Settings, store: EventQueue, post: Callable[[Written], None]) -> Writer:
    """A dispatcher's Writer: half its pooled connections write at once, from 1 to 4 (the rest
    claim, renew leases and serve handlers' ctx.db); a full batch is half a claim's."""
    return Writer(store, post, threads=max(1, min(4, settings.pool_size // 2)),
                  full_batch=max(1, settings.batch_size // 2))
