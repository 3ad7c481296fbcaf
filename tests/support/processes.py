"""Dispatcher processes for tests: started like a user starts them, watched, killed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUICK = {"RETRY_BASE_S": "0.05", "RETRY_MAX_S": "0.2", "POLL_INTERVAL_S": "0.2",
         "SHUTDOWN_GRACE_S": "5"}


def dispatcher(dsn: str, *, until_idle: bool = True, handlers: str = "tests.support.jobs",
               flags: Sequence[str] = (), **env: str) -> subprocess.Popen[str]:
    """Start `orchestrator run` on ``dsn``; ``flags`` go on its command line, ``env`` adds
    ORCHESTRATOR_* (lower case names) or other variables."""
    environ = os.environ | {f"ORCHESTRATOR_{k}": v for k, v in QUICK.items()}
    environ |= {"ORCHESTRATOR_DSN": dsn, "JOBS_EXEC_LOG": dsn}
    environ |= {k if not k.islower() else f"ORCHESTRATOR_{k.upper()}": v for k, v in env.items()}
    argv = [sys.executable, "-m", "orchestrator", "--log-level", "WARNING", "run",
            "--handlers", handlers, *flags] + (["--until-idle"] if until_idle else [])
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


class Output:
    """A process's output (text mode stdout, stderr merged or not), read as it comes by a
    thread, so that a test can wait for a line while the process runs."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self._proc = proc
        self._lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self._lines.append(line)

    def text(self) -> str:
        return "".join(self._lines)

    def wait_for(self, pattern: str, timeout_s: float = 60, what: str = "a line") -> str:
        """Wait until a line matches ``pattern``; its first group. Fails the test when the
        process exits first or the time is up."""
        found: list[str] = []

        def seen() -> bool:
            if match := re.search(pattern, self.text()):
                found.append(match.group(1))
                return True
            return self._proc.poll() is not None and not self._thread.is_alive()

        wait_for(seen, timeout_s=timeout_s, what=what)
        assert found, f"exited ({self._proc.returncode}) before {what}:\n{self.text()}"
        return found[0]

    def close(self) -> str:
        """Once the process has exited: all it wrote."""
        self._thread.join(timeout=30)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        return self.text()
