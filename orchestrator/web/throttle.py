"""Expensive reads of a dashboard that listens beyond this machine, one at a time.

The stuck-row list and a text search of events scan many rows; anyone who can reach the port may
ask. A Throttle runs one such read at a time (another, asked meanwhile, is told to come back:
Busy), and answers the same question asked again within ``fresh_s`` from its last answer, so
any number of open pages costs the database no more than one.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from orchestrator.errors import Busy

T = TypeVar("T")


class Throttle:
    """``run`` reads one at a time and remembers the last ``keep`` answers for ``fresh_s``."""

    def __init__(self, fresh_s: float, *, keep: int = 32,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fresh_s = fresh_s
        self._keep = keep
        self._clock = clock
        self._answers: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._answers_lock = threading.Lock()
        self._reading = threading.Lock()

    def run(self, question: Hashable, read: Callable[[], T]) -> T:
        """``read()``'s answer to ``question``, or the one given less than ``fresh_s`` ago.
        Raises Busy while another read runs."""
        with self._answers_lock:
            if (hit := self._answers.get(question)) and self._clock() - hit[0] < self.fresh_s:
                answer: T = hit[1]
                return answer
        if not self._reading.acquire(blocking=False):
            raise Busy()
        try:
            answer = read()
        finally:
            self._reading.release()
        with self._answers_lock:
            self._answers[question] = (self._clock(), answer)
            self._answers.move_to_end(question)
            while len(self._answers) > self._keep:
                self._answers.popitem(last=False)
        return answer
