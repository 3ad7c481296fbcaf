"""The dashboard as an operator starts it: `orchestrator dashboard` in a process of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.net import get
from tests.support.processes import ROOT, Output, wait_for

LISTENING = r"dashboard on (http://127\.0\.0\.1:\d+)/"


@contextmanager
def running_dashboard(dsn: str, *flags: str) -> Iterator[str]:
    """Start the dashboard on ``dsn``, on a port it binds itself (``--port 0``) and names; its
    base URL. Stopped with Ctrl-C."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "dashboard", "--dsn", dsn, "--port", "0",
         *flags], cwd=ROOT, env=environ | {"ORCHESTRATOR_STUCK_AFTER_S": "30"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(proc)
    try:
        base = output.wait_for(LISTENING, what="the dashboard to say where it listens")
        wait_for(lambda: proc.poll() is not None or get(base + "/api/overview") is not None,
                 what="the dashboard to answer")
        assert proc.poll() is None, output.text()
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out = output.close()
        assert "Traceback" not in out, out
