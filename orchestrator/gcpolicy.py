"""Garbage collection for a process that dispatches: fewer, cheaper collections.

A dispatcher making hundreds of remote calls at once allocates a few hundred objects per
call (aiohttp's request and response, futures, timers, the JSON), and many live the length
of a call. With CPython's default thresholds the cyclic collector then ran about 160 times a
second in one dispatcher at 256 calls, and each full collection walked every object imported
at start (psycopg, aiohttp, the handlers' modules): 2.4 s of a 13.5 s drain, up to 100 ms at
a time with the GIL held, during which no call was sent or answered and nothing was written.
``tune`` moves what start-up left into the permanent generation (``gc.freeze``), so later
collections skip it, and lets the youngest generation grow before it is collected. Cycles
are still collected: only less often, and without rereading the modules.
"""

from __future__ import annotations

import gc

#: Allocations (net of frees) before the youngest generation is collected; CPython's is 700.
YOUNG_THRESHOLD = 10_000


def tune() -> None:
    """Freeze what the process holds now and collect the young generation less often.
    Call it once start-up is done (``orchestrator run`` does, before dispatching)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
