"""Dispatcher processes for a case: `orchestrator run` serving orchestrator.bench.workflow, as
a user runs it.

Each process's pool connects with its own application_name (``bench-dispatcher-<n>``); LISTEN
connections all carry the engine's listen name. So the bench can tell when every process is
listening and count the connections each holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.bench.db import BenchError, Session, with_application_name
from orchestrator.bench.procs import cpu_s, vm_hwm_kb
from orchestrator.db import LISTEN_APPLICATION_NAME

HANDLERS = "orchestrator.bench.workflow"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class DispatcherSettings:
    """The engine settings every dispatcher of the bench runs with."""

    concurrency: int
    pool_size: int
    batch_size: int


class Dispatchers:
    """``count`` dispatcher processes, started on enter (once each is listening) and stopped
    gracefully on exit; ``env``: more environment variables for them. Raises BenchError, with
    the log's tail, when one fails."""

    def __init__(self, dsn: str, count: int, settings: DispatcherSettings,
                 monitor: Session, *, env: Mapping[str, str] | None = None) -> None:
        self._dsn = dsn
        self._env = dict(env or {})
        self._count = count
        self._settings = settings
        self._monitor = monitor
        self._logs = tempfile.TemporaryDirectory(prefix="orchestrator-bench-")
        self._procs: list[subprocess.Popen[bytes]] = []
        self._stopped = False
        self.peak_pool: dict[str, int] = {}
        self.peak_listen = 0
        self._listen_before = 0

    def __enter__(self) -> Dispatchers:
        self._listen_before = self._sessions()[1]
        for n in range(self._count):
            self._procs.append(self._spawn(n))
        try:
            self._wait_listening()
        except BaseException:
            self._kill()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self._kill()
            self._logs.cleanup()

    def _spawn(self, n: int) -> subprocess.Popen[bytes]:
        s = self._settings
        dsn = with_application_name(self._dsn, f"bench-dispatcher-{n}")
        argv = [sys.executable, "-m", "orchestrator", "--log-level", "WARNING", "run",
                "--handlers", HANDLERS, "--concurrency", str(s.concurrency),
                "--pool-size", str(s.pool_size), "--batch-size", str(s.batch_size)]
        env = os.environ | self._env | {"ORCHESTRATOR_DSN": dsn}
        env.pop("ORCHESTRATOR_LISTEN_DSN", None)
        log = open(self._log_path(n), "wb")  # noqa: SIM115 - the child owns it from here
        with log:
            return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)

    def _log_path(self, n: int) -> Path:
        return Path(self._logs.name) / f"dispatcher-{n}.log"

    def _wait_listening(self) -> None:
        """A dispatcher opens its pool (one connection), then its LISTEN connection."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            self.check_alive()
            pool, listen = self.sample_connections()
            if len(pool) == self._count and listen - self._listen_before >= self._count:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"dispatchers not listening after {READY_TIMEOUT_S:.0f}s"
                                 f"{self._tail(0)}")
            time.sleep(0.05)

    def sample_connections(self) -> tuple[dict[str, int], int]:
        """The pool sessions of each dispatcher and the LISTEN sessions now; peaks are kept."""
        pool, listen = self._sessions()
        for name, n in pool.items():
            self.peak_pool[name] = max(n, self.peak_pool.get(name, 0))
        self.peak_listen = max(self.peak_listen, listen - self._listen_before)
        return pool, listen

    @property
    def connections_per_dispatcher(self) -> int:
        """The most sessions one process held: its pool's peak and its share of LISTEN."""
        listen = -(-self.peak_listen // self._count)
        return max(self.peak_pool.values(), default=0) + listen

    def _sessions(self) -> tuple[dict[str, int], int]:
        rows = self._monitor.run("dispatcher_connections", {"listen": LISTEN_APPLICATION_NAME})
        counts = {r["application_name"]: int(r["connections"]) for r in rows}
        listen = counts.pop(LISTEN_APPLICATION_NAME, 0)
        return counts, listen

    def peak_rss_mb(self) -> float | None:
        """The largest peak resident set (VmHWM) of the processes, in MB (None off Linux)."""
        peaks = [vm_hwm_kb(p.pid) for p in self._procs if p.poll() is None]
        known = [kb for kb in peaks if kb is not None]
        return max(known) / 1024 if known else None

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system) the running processes have used so far (None off
        Linux)."""
        times = [cpu_s(p.pid) for p in self._procs if p.poll() is None]
        known = [t for t in times if t is not None]
        return sum(known) if known else None

    def stop(self) -> None:
        """SIGTERM (graceful: finish or release), wait, then wait for their sessions to end so
        the server's statistics include everything they did."""
        if self._stopped:
            return
        self._stopped = True
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for n, proc in enumerate(self._procs):
            try:
                code = proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise BenchError(f"dispatcher {n} did not stop{self._tail(n)}") from None
            if code != 0:
                raise BenchError(f"dispatcher {n} exited with {code}{self._tail(n)}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pool, listen = self.sample_connections()
            if not pool and listen <= self._listen_before:
                return
            time.sleep(0.02)

    def check_alive(self) -> None:
        """Raises BenchError naming a dispatcher that exited, with its log's last lines."""
        for n, proc in enumerate(self._procs):
            if proc.poll() is not None:
                raise BenchError(f"dispatcher {n} exited with {proc.returncode}{self._tail(n)}")

    def _kill(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def _tail(self, n: int) -> str:
        try:
            lines = self._log_path(n).read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            return ""
        return (": " + " / ".join(lines)) if lines else ""
