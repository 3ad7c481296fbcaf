"""Dispatcher processes for tests: started like a user starts them, watched, killed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUICK = {"RETRY_BASE_S": "0.05", "RETRY_MAX_S": "0.2", "POLL_INTERVAL_S": "0.2",
         "SHUTDOWN_GRACE_S": "5"}


def dispatcher(dsn: str, *, until_idle: bool = True, handlers: str = "tests.support.jobs",
               **env: str) -> subprocess.Popen[str]:
    """Start `orchestrator run` on ``dsn``; ``env`` adds ORCHESTRATOR_* (or any) variables."""
    environ = os.environ | {f"ORCHESTRATOR_{k}": v for k, v in QUICK.items()}
    environ |= {"ORCHESTRATOR_DSN": dsn, "JOBS_EXEC_LOG": dsn}
    environ |= {k if not k.islower() else f"ORCHESTRATOR_{k.upper()}": v for k, v in env.items()}
    argv = [sys.executable, "-m", "orchestrator", "--log-level", "WARNING", "run",
            "--handlers", handlers] + (["--until-idle"] if until_idle else [])
    return subprocess.Popen(argv, cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen[str], timeout_s: float = 240) -> str:
    """Wait for ``proc``; its output. Fails the test if it exited non-zero."""
    out, _ = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, f"dispatcher exited {proc.returncode}:\n{out}"
    return out


def wait_for(condition: Callable[[], bool], timeout_s: float = 60, what: str = "condition",
             every_s: float = 0.05) -> float:
    """Poll ``condition`` until true; the seconds it took. Fails after ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)
    return time.monotonic() - started
