"""The dashboard as an operator starts it: `orchestrator dashboard` in a process of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.net import free_port, get
from tests.support.processes import ROOT, wait_for


@contextmanager
def running_dashboard(dsn: str, *flags: str) -> Iterator[str]:
    """Start the dashboard on ``dsn`` on a free port; its base URL. Stopped with Ctrl-C."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "dashboard", "--dsn", dsn, "--port", str(port),
         *flags], cwd=ROOT, env=environ | {"ORCHESTRATOR_STUCK_AFTER_S": "30"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or get(base + "/api/overview") is not None,
                 what="the dashboard to answer")
        assert proc.poll() is None, proc.communicate()[0]
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        assert "Traceback" not in out, out
