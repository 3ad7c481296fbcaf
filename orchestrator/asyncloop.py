"""One asyncio event loop per process, on a thread of its own, for async handlers.

Remote handlers and ``async def`` handlers run here, so a call that waits on the network holds
no thread: one loop keeps hundreds of them in flight. Sync handlers keep their worker threads.
The loop starts on first use and lives as long as the process (its thread is a daemon);
``start``, ``submit`` and ``run`` may be called from any thread but the loop's own. ``start``
hands coroutines over in batches: one wake-up of the loop starts every coroutine handed over
since the last, which is what a dispatcher starting a claimed batch needs.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_handed: deque[Started] = deque()  # started from other threads, not yet on the loop
_wake_queued = False
_closers: list[Callable[[], Awaitable[None]]] = []
CLOSE_TIMEOUT_S = 5.0


def loop() -> asyncio.AbstractEventLoop:
    """The process's loop, started on its thread at the first call."""
    global _loop, _thread
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            _thread = threading.Thread(target=_loop.run_forever, daemon=True,
                                       name="orchestrator-async")
            _thread.start()
        return _loop


class Started:
    """A coroutine handed to the loop by ``start``; ``cancel`` it from any thread."""

    __slots__ = ("_coro", "_task")

    def __init__(self, coro: Coroutine[Any, Any, None]) -> None:
        self._coro: Coroutine[Any, Any, None] | None = coro
        self._task: asyncio.Task[None] | None = None

    def _begin(self) -> None:
        if self._coro is not None:
            self._task = asyncio.get_running_loop().create_task(self._coro)
            self._coro = None

    def cancel(self) -> None:
        """Cancel it: a CancelledError where it waits, or never run if it has not begun."""
        loop().call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
        elif self._coro is not None:
            self._coro.close()
            self._coro = None


def start(coro: Coroutine[Any, Any, None]) -> Started:
    """Run ``coro`` on the loop, soon; nothing to wait for (it reports by itself)."""
    global _wake_queued
    started = Started(coro)
    with _lock:
        _handed.append(started)
        wake, _wake_queued = not _wake_queued, True
    if wake:
        loop().call_soon_threadsafe(_begin_handed)
    return started


def _begin_handed() -> None:
    global _wake_queued
    with _lock:
        batch = list(_handed)
        _handed.clear()
        _wake_queued = False
    for started in batch:
        started._begin()


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Run ``coro`` on the loop; its future (``cancel()`` on it cancels the task)."""
    return asyncio.run_coroutine_threadsafe(coro, loop())


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the loop and wait for its result (or its exception, raised here).
    Raises RuntimeError when called from the loop's own thread (it would wait for itself)."""
    if threading.current_thread() is _thread:
        coro.close()
        raise RuntimeError("asyncloop.run called from the loop's own thread; await instead")
    return submit(coro).result()



def close_at_exit(close: Callable[[], Awaitable[None]]) -> None:
    """Await ``close()`` on the loop when the process exits (say, an HTTP client's sessions,
    which would otherwise be reported as unclosed)."""
    with _lock:
        _closers.append(close)


@atexit.register
def _close_all() -> None:
    with _lock:
        closers = list(_closers)
        _closers.clear()
    if not closers or _loop is None:
        return

    async def close_each() -> None:
        await asyncio.gather(*(close() for close in closers), return_exceptions=True)

    with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):  # exiting anyway
        submit(close_each()).result(timeout=CLOSE_TIMEOUT_S)
