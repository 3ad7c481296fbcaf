"""Short-lived database credentials: a password asked for each time a connection opens.

Managed PostgreSQL accepts tokens in place of passwords (AWS RDS IAM auth, Entra ID on Azure,
Cloud SQL IAM). They expire within minutes to an hour, so none is kept in the DSN: a provider is
called for every new connection instead. An open connection outlives its token (PostgreSQL
checks a password only when a session starts), and the pool replaces connections over time.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.config import Settings
from orchestrator.errors import ConfigError, CredentialsError

log = logging.getLogger(__name__)

PasswordProvider = Callable[[Mapping[str, Any]], str]
"""Called with the parameters of the connection about to open (host, port, user, dbname; never
a password); returns the password to use. Raise CredentialsError (or anything) to fail it."""

# The connection parameters a password command sees, as libpq's own environment variables.
_COMMAND_ENV = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE"}


class PasswordCommand:
    """A provider that runs a shell command and uses what it prints, as cloud CLIs print tokens
    (``aws rds generate-db-auth-token ...``, ``az account get-access-token ...``).

    The command sees PGHOST, PGPORT, PGUSER and PGDATABASE of the connection being opened.
    Raises CredentialsError when it fails, times out or prints nothing; the message never
    contains its output.
    """

    def __init__(self, command: str, *, timeout_s: float = 30.0) -> None:
        self.command = command
        self.timeout_s = timeout_s

    def __call__(self, params: Mapping[str, Any]) -> str:
        env = os.environ | {var: str(params[key]) for key, var in _COMMAND_ENV.items()
                            if params.get(key) not in (None, "")}
        try:
            done = subprocess.run(self.command, shell=True, env=env, capture_output=True,
                                  text=True, timeout=self.timeout_s, stdin=subprocess.DEVNULL,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise CredentialsError(
                f"password command timed out after {self.timeout_s:g}s") from None
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise CredentialsError(
                f"password command failed (exit {done.returncode}): {reason}")
        password = done.stdout.strip()
        if not password:
            raise CredentialsError("password command printed no password")
        return password

    def __repr__(self) -> str:
        return f"PasswordCommand({self.command!r})"


def load_provider(spec: str) -> PasswordProvider:
    """The callable named by ``module:attribute``. Raises ConfigError when it cannot be had."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"password_provider {spec!r} must look like 'module:function'")
    try:
        provider = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load password_provider {spec!r}: {exc}") from None
    if not callable(provider):
        raise ConfigError(f"password_provider {spec!r} is not callable")
    return provider  # type: ignore[no-any-return]


def from_settings(settings: Settings) -> PasswordProvider | None:
    """The provider the settings name, or None: the DSN's own password (or none) is used."""
    if settings.password_command:
        return PasswordCommand(settings.password_command)
    if settings.password_provider:
        return load_provider(settings.password_provider)
    return None


class WatchedProvider:
    """A provider that counts its calls and failures and times them, for metrics and logs.

    ``calls``, ``failures`` (it raised, or returned no password) and ``seconds`` (the time all
    calls took) only grow. Each call is logged at debug level; the provider's answer or
    exception is passed on unchanged (whoever called says what a failure cost: the pool and
    the LISTEN connection log it and try again, a command fails with it).
    """

    def __init__(self, provider: PasswordProvider) -> None:
        self.provider = provider
        self.calls = 0
        self.failures = 0
        self.seconds = 0.0
        self._lock = threading.Lock()

    def __call__(self, params: Mapping[str, Any]) -> str:
        started = time.monotonic()
        try:
            answer = self.provider(params)
        except Exception as exc:
            self._count(started, failed=True, outcome=f"failed: {type(exc).__name__}")
            raise
        empty = not isinstance(answer, str) or not answer
        self._count(started, failed=empty, outcome="returned no password" if empty else "answered")
        return answer

    def _count(self, started: float, *, failed: bool, outcome: str) -> None:
        took_s = time.monotonic() - started
        with self._lock:
            self.calls += 1
            self.failures += failed
            self.seconds += took_s
        log.debug("password provider %s in %.0f ms", outcome, took_s * 1000)

    def __repr__(self) -> str:
        return f"WatchedProvider({self.provider!r})"


def watched(provider: PasswordProvider | None) -> WatchedProvider | None:
    """``provider`` counted and timed (itself if it already is), or None for None."""
    if provider is None or isinstance(provider, WatchedProvider):
        return provider
    return WatchedProvider(provider)
