"""Connections: the work pool, the dedicated LISTEN connection, DSN handling.

With store.py, the only module that imports psycopg. Driver errors leave here as StoreError
subclasses whose messages never contain a password.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import conninfo
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from orchestrator.backoff import reconnect_delay_s
from orchestrator.errors import (
    ConfigError,
    CredentialsError,
    DatabaseUnavailable,
    NotMigrated,
    PreparedStatementsLost,
    StoreError,
)
from orchestrator.sql import QUERIES

if TYPE_CHECKING:
    from orchestrator.credentials import PasswordProvider

log = logging.getLogger(__name__)

# TCP keepalives and a send timeout find a silently dead peer in about 20 s instead of the
# kernel's two hours (they do not apply to Unix sockets).
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3,
              "keepalives_count": 3, "tcp_user_timeout": 20_000}
CHANNEL = "orchestrator"
LISTEN_APPLICATION_NAME = "orchestrator-listen"
APPLICATION_NAME = "orchestrator"

# A URI's password runs from the user's ":" to the last "@" before the next blank: a password
# written with a raw "@" or "/" in it is hidden whole (libpq would cut it at the first "@" and
# report the rest as part of the host name).
_PASSWORD_IN_URI = re.compile(r"(://[^:/@\s]*:)\S*@")
_PASSWORD_PARAM = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with any password in a DSN (URI or key=value form) replaced by ``***``."""
    text = _PASSWORD_IN_URI.sub(r"\1***@", text)
    return _PASSWORD_PARAM.sub(r"\1***", text)


def connect_kwargs(dsn: str, *, password: PasswordProvider | None = None,
                   **extra: Any) -> dict[str, Any]:
    """Connection parameters for ``dsn``: the DSN's own, our defaults where it has none, and
    the password ``password`` gives now (asked on every call, so per new connection).

    Raises ConfigError for a DSN that does not parse, CredentialsError when the provider fails.
    """
    try:
        params: dict[str, Any] = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"invalid DSN {redact(dsn)!r}: {redact(str(exc))}") from None
    params.setdefault("application_name", APPLICATION_NAME)
    params.setdefault("connect_timeout", 10)
    if not str(params.get("host", "")).startswith("/"):
        for key, value in KEEPALIVES.items():
            params.setdefault(key, value)
    if password is not None:
        params["password"] = _ask(password, params)
    params.update(extra)
    return params


def _ask(password: PasswordProvider, params: dict[str, Any]) -> str:
    """The provider's password for a connection with ``params`` (shown without a password).
    Raises CredentialsError whatever went wrong in it."""
    try:
        answer = password(MappingProxyType({k: v for k, v in params.items() if k != "password"}))
    except CredentialsError:
        raise
    except Exception as exc:
        raise CredentialsError(
            f"password provider failed: {type(exc).__name__}: {redact(str(exc))}") from exc
    if not isinstance(answer, str) or not answer:
        raise CredentialsError("password provider returned no password")
    return answer


def connect(dsn: str, *, autocommit: bool = False,
            password: PasswordProvider | None = None) -> psycopg.Connection[Any]:
    """One connection. Raises DatabaseUnavailable (password redacted) when it cannot connect."""
    try:
        return psycopg.connect(**connect_kwargs(dsn, password=password), autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(_unavailable(dsn, exc)) from None


def _unavailable(dsn: str, exc: BaseException) -> str:
    return f"cannot connect to {describe(dsn)}: {one_line(exc)}"


def one_line(exc: BaseException) -> str:
    """A driver error as one line, password-free (libpq spreads its messages over lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.replace("connection failed: ", "").split(" Is the server running")[0]
    if _lost_prepared_statement(exc):
        text += f"; {PreparedStatementsLost.HINT}"
    return redact(text)


def _lost_prepared_statement(exc: BaseException) -> bool:
    """Whether ``exc`` is psycopg's own prepared statement (``_pg3_*``) missing or already
    there: the mark of a transaction-mode pooler that hands each transaction another server
    session."""
    return (isinstance(exc, psycopg.errors.InvalidSqlStatementName
                        | psycopg.errors.DuplicatePreparedStatement)
            and '"_pg3_' in str(exc))


def describe(dsn: str) -> str:
    """A short, password-free name for the server a DSN points at."""
    try:
        p = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "the database (unparsable DSN)"
    host = p.get("host") or "localhost"
    port = p.get("port") or "5432"
    where = host if str(host).startswith("/") else f"{host}:{port}"
    return f"database {p.get('dbname') or p.get('user') or '?'!s} at {where}"


# How long taking a pooled connection may wait: while the database is down the dispatcher then
# backs off and retries instead of hanging.
POOL_TIMEOUT_S = 10.0
# The dispatcher loop waits less: it has timeouts and heartbeats to keep, and after a database
# restart it should retry soon rather than sit in a long wait.
LOOP_POOL_TIMEOUT_S = 2.0
RECONNECT_GIVE_UP_S = 3.0
# A connection given back less than this long ago is handed out again without a ping. Pinging
# every one cost a round trip per claim and per write-back, on an idle system a good part of an
# event's latency; one that died in that moment fails its statement, which the caller handles
# as any lost connection (the pool discards it).
FRESH_S = 1.0


class FreshCheck:
    """The pool's check: ping a connection only when it sat in the pool ``FRESH_S`` or more."""

    def __init__(self) -> None:
        self._returned: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary())

    def returned(self, conn: psycopg.Connection[Any]) -> None:
        self._returned[conn] = time.monotonic()

    def check(self, conn: psycopg.Connection[Any]) -> None:
        if time.monotonic() - self._returned.get(conn, -FRESH_S) >= FRESH_S:
            ConnectionPool.check_connection(conn)


def make_pool(dsn: str, *, max_size: int, name: str = "orchestrator",
              password: PasswordProvider | None = None, prepare: bool = True,
              max_lifetime_s: float = 3600.0, max_idle_s: float = 600.0) -> ConnectionPool:
    """A closed pool of work connections; open it with ``open(wait=True)``.

    With ``password``, each new connection asks it for its password. ``prepare=False`` turns
    off server-side prepared statements, which a transaction-mode pooler cannot keep; with
    ``prepare`` on, a new connection found to go through a pooler (PoolerCheck) gets them off
    all the same. A connection is replaced after ``max_lifetime_s`` (less up to 5%) and closed
    after ``max_idle_s`` unused (down to one).
    """
    extra = {} if prepare else {"prepare_threshold": None}
    kwargs: Any = (functools.partial(_pool_connect_kwargs, dsn, password, extra)
                   if password else connect_kwargs(dsn, **extra))
    fresh = FreshCheck()
    pooler = PoolerCheck(told=not prepare)
    pool = ConnectionPool(
        kwargs=kwargs, min_size=1, max_size=max_size, open=False, name=name,
        check=fresh.check, reset=fresh.returned, timeout=POOL_TIMEOUT_S,
        configure=pooler if prepare else None,
        max_lifetime=max_lifetime_s, max_idle=max_idle_s,
        # The pool retries a failed connection with a doubling delay; given up early, the
        # next request starts afresh, so it reconnects within our own backoff, not 30 s later.
        reconnect_timeout=RECONNECT_GIVE_UP_S,
    )
    _pooler_checks[pool] = pooler
    return pool


_pooler_checks: weakref.WeakKeyDictionary[ConnectionPool, PoolerCheck] = (
    weakref.WeakKeyDictionary())


def behind_pooler(pool: ConnectionPool) -> bool:
    """Whether the connections of ``pool`` (made by make_pool) go through a transaction-mode
    pooler: made with ``prepare=False`` (told so), or a new connection found one."""
    check = _pooler_checks.get(pool)
    return check is not None and check.pooled


@contextmanager
def pipelined(conn: psycopg.Connection[Any], *, commit: bool, pooled: bool) -> Iterator[None]:
    """A pipeline for the block's statements, then (``commit``) the COMMIT: sent with them,
    one round trip; behind a transaction-mode pooler (``pooled``) after the pipeline ends.
    There the pooler gives the server back at the COMMIT's answer, and the Sync and Flush that
    psycopg sends when a pipeline ends could take a server again that no query releases:
    two such idle connections held PgBouncer's two servers until its query_wait_timeout."""
    with conn.pipeline():
        yield
        if commit and not pooled:
            conn.commit()
    if commit and pooled:
        conn.commit()


def _pool_connect_kwargs(dsn: str, password: PasswordProvider,
                         extra: dict[str, Any]) -> dict[str, Any]:
    """connect_kwargs for a new pooled connection, opened in the background: a password that
    cannot be had is logged here (the pool only tries again, its own log says it quietly)."""
    try:
        return connect_kwargs(dsn, password=password, **extra)
    except CredentialsError as exc:
        log.warning("no password for a new pooled connection (the pool tries again): %s", exc)
        raise


class PoolerCheck:
    """A new pooled connection's check for a pooler (PgBouncer, RDS Proxy, Supavisor): one
    tells a client a process id of its own, not the server's. Found, prepared statements are
    turned off on the connection (safe in any pool mode) and a warning names the flag, once
    per pool. One round trip per new connection."""

    def __init__(self, *, told: bool = False) -> None:
        self.pooled = told  #: a pooler is known to be there (told so, or found)

    def __call__(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(QUERIES["backend_pid"]).fetchone()
        conn.commit()  # the pool takes only idle connections
        if row is None or row[0] == conn.info.backend_pid:
            return
        conn.prepare_threshold = None
        if not self.pooled:
            self.pooled = True
            log.warning("the DSN goes through a connection pooler (the server's process id is "
                        "not the one the connection was given): server-side prepared "
                        "statements are off; pass --transaction-pooling to say so, and give "
                        "LISTEN a direct connection (--listen-dsn) or --no-listen")


def pool_stats(pool: ConnectionPool) -> dict[str, int]:
    """psycopg_pool's ``get_stats()``: pool_size, pool_available, requests_waiting,
    connections_num, ... (counters since the pool was made; a key is missing while 0)."""
    return pool.get_stats()


def open_pool(pool: ConnectionPool, dsn: str, *, timeout_s: float = 15.0,
              password: PasswordProvider | None = None) -> None:
    """Open ``pool`` and wait for its first connection. Raises DatabaseUnavailable at once
    when the database cannot be reached (one direct attempt gives the real reason: refused,
    bad password, no such database) rather than retrying in the background."""
    connect(dsn, password=password).close()
    try:
        pool.open(wait=True, timeout=timeout_s)
    except PoolTimeout:
        pool.close()
        raise DatabaseUnavailable(f"cannot connect to {describe(dsn)}: timed out") from None


@contextmanager
def borrowed(pool: ConnectionPool, timeout_s: float = LOOP_POOL_TIMEOUT_S
             ) -> Iterator[psycopg.Connection[Any]]:
    """A pooled connection, committed on leaving (rolled back on an error). Raises
    DatabaseUnavailable when none comes within ``timeout_s`` or the commit loses the server."""
    try:
        with pool.connection(timeout=timeout_s) as conn:
            yield conn
    except PoolTimeout:
        raise DatabaseUnavailable(
            f"no database connection available within {timeout_s:g}s") from None
    except psycopg.OperationalError as exc:
        # The COMMIT (or ROLLBACK) on leaving the pool's block met a server that went away.
        raise DatabaseUnavailable(f"database error: {one_line(exc)}") from exc


class Transaction:
    """A pooled connection taken only when first used, for a handler's own writes.

    ``connection`` begins the transaction; ``close(commit)`` ends it and returns the connection.
    ``pid`` is the server process, so a hung handler's session can be terminated. ``pooled``:
    the connection goes through a transaction-mode pooler, whose reported pid is not the
    server's; the server is asked (which pins one server connection for the transaction).
    """

    def __init__(self, pool: ConnectionPool, *, pooled: bool = False) -> None:
        self._pool = pool
        self._pooled = pooled
        self._conn: psycopg.Connection[Any] | None = None
        self.pid: int | None = None

    @property
    def started(self) -> bool:
        return self._conn is not None

    @property
    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            try:
                self._conn = self._pool.getconn()
            except PoolTimeout as exc:
                raise DatabaseUnavailable(f"no database connection available: {exc}") from None
            self.pid = self._server_pid(self._conn)
        return self._conn

    def _server_pid(self, conn: psycopg.Connection[Any]) -> int:
        if not self._pooled:
            return conn.info.backend_pid
        row = conn.execute(QUERIES["backend_pid"]).fetchone()
        return int(row[0]) if row else 0

    def close(self, *, commit: bool = False) -> None:
        """Commit or roll back, and return the connection to the pool (a broken one is
        discarded by the pool). Never raises for a connection that already failed."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if commit:
                conn.commit()
            else:
                conn.rollback()
        except psycopg.Error:
            log.debug("closing a failed handler transaction", exc_info=True)
        finally:
            self._pool.putconn(conn)


class Listener:
    """The dedicated LISTEN connection, in a thread of its own.

    Calls ``wake()`` for each notification, and also right after every (re)connect, because
    notifications sent while it was away are lost: the caller then claims to catch up.
    Reconnects with backoff; ``up`` tells whether it is listening now.
    """

    def __init__(self, dsn: str, wake: Callable[[], None], *, ping_s: float = 5.0,
                 password: PasswordProvider | None = None) -> None:
        self._dsn = dsn
        self._password = password
        self._wake = wake
        self._ping_s = ping_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orchestrator-listen", daemon=True)
        self.up = False
        self.reconnects = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                params = connect_kwargs(self._dsn, password=self._password,
                                        application_name=LISTEN_APPLICATION_NAME)
                with psycopg.connect(**params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.up, failures = True, 0
                    self._wake()
                    self._listen(conn)
            except (psycopg.Error, CredentialsError) as exc:
                if self._stop.is_set():
                    break
                failures += 1
                self.reconnects += self.up
                log.warning("LISTEN connection lost (%s); reconnecting", one_line(exc))
            self.up = False
            self._stop.wait(reconnect_delay_s(failures))

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        checked = time.monotonic()
        while not self._stop.is_set():
            for _ in conn.notifies(timeout=0.25, stop_after=1):
                self._wake()
            if time.monotonic() - checked >= self._ping_s:
                self._ping(conn)
                checked = time.monotonic()

    def _ping(self, conn: psycopg.Connection[Any]) -> None:
        """A round trip with a deadline. A connection that silently died (the server host
        vanished, or its process hangs) sends no error and would wait for ever: when the answer
        does not come in time, a watchdog shuts the socket down, which fails the query."""
        watchdog = threading.Timer(self._ping_s, _shut_down, args=(conn,))
        watchdog.start()
        try:
            conn.execute("SELECT 1")
        finally:
            watchdog.cancel()


def _shut_down(conn: psycopg.Connection[Any]) -> None:
    log.warning("LISTEN connection did not answer a ping; dropping it")
    with suppress(OSError, psycopg.Error):
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        with sock:
            sock.shutdown(socket.SHUT_RDWR)


def is_connection_error(exc: BaseException, conn: psycopg.Connection[Any] | None = None) -> bool:
    """Whether ``exc`` means the server or the connection is gone (as opposed to a bad query)."""
    if conn is not None and (conn.broken or conn.closed):
        return True
    if isinstance(exc, psycopg.errors.AdminShutdown | psycopg.errors.CrashShutdown
                  | psycopg.errors.CannotConnectNow):
        return True
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        state = getattr(exc, "sqlstate", None)
        return state is None or state.startswith("08")
    return False


@contextmanager
def translated(conn: psycopg.Connection[Any] | None = None) -> Iterator[None]:
    """Turn driver errors into StoreError subclasses (passwords redacted)."""
    try:
        yield
    except psycopg.errors.UndefinedTable as exc:
        raise NotMigrated(f"{NotMigrated.__doc__} ({one_line(exc)})") from exc
    except psycopg.Error as exc:
        if _lost_prepared_statement(exc):
            raise PreparedStatementsLost(one_line(exc)) from exc
        kind = DatabaseUnavailable if is_connection_error(exc, conn) else StoreError
        raise kind(f"database error: {one_line(exc)}") from exc


def rollback_quietly(conn: psycopg.Connection[Any]) -> None:
    """Roll back, ignoring a broken connection (the pool discards it)."""
    with suppress(psycopg.Error):
        conn.rollback()


def as_param(value: Any) -> Any:
    """A value for a query parameter: dicts and lists go as jsonb."""
    return Jsonb(value) if isinstance(value, dict | list) else value


def is_psycopg(conn: object) -> bool:
    """Whether ``conn`` is a psycopg 3 connection."""
    return isinstance(conn, psycopg.Connection)
