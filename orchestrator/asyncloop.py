"""One asyncio event loop per process, on a thread of its own, for async handlers.

Remote handlers and ``async def`` handlers run here, so a call that waits on the network holds
no thread: one loop keeps hundreds of them in flight. Sync handlers keep their worker threads.
The loop starts on first use and lives as long as the process (its thread is a daemon);
``run`` and ``submit`` may be called from any thread but the loop's own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


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

