"""The `orchestrator` command: thin typer commands over Orchestrator.

Errors a user can fix (bad DSN, unmigrated database, broken handler module) print one line and
exit 1; usage errors exit 2; nothing prints a stack trace unless --debug is given.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from orchestrator import schema
from orchestrator.app import Orchestrator
from orchestrator.config import Settings, help_for
from orchestrator.db import redact
from orchestrator.dispatcher import Dispatcher
from orchestrator.embedded import EmbeddedServer
from orchestrator.errors import OrchestratorError
from orchestrator.registry import load_registry

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    help="A Postgres-driven workflow orchestrator: row changes drive handlers through a durable "
         "event log.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Manage the embedded PostgreSQL server (used when no DSN is given).",
                     no_args_is_help=True)
app.add_typer(db_app, name="db")
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
_debug = False


def _opt(name: str) -> Any:
    """A flag for setting ``name``: its documented meaning, default and env variable."""
    return typer.Option(f"--{name.replace('_', '-')}", show_default=False, help=help_for(name))


Dsn = Annotated[str | None, typer.Option(
    "--dsn", help="PostgreSQL connection string. Default: the embedded server. "
                  "Env: ORCHESTRATOR_DSN, then DATABASE_URL.", show_default=False)]
Handlers = Annotated[str | None, _opt("handlers")]
DataDir = Annotated[Path | None, _opt("data_dir")]


def friendly(fn: F) -> F:
    """Turn OrchestratorError into one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OrchestratorError as exc:
            if _debug:
                raise
            err.print(f"[red]error:[/red] {escape(redact(str(exc)))}", soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main_options(
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    debug: Annotated[bool, typer.Option(help="Show stack traces for errors.")] = False,
) -> None:
    global _debug
    _debug = debug
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The pool's own reconnect chatter repeats what the dispatcher reports once.
    logging.getLogger("psycopg.pool").setLevel(max(level, logging.ERROR))
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))


def _settings(**overrides: Any) -> Settings:
    return Settings.load(**overrides)


def _registry(settings: Settings) -> Any:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a handler package next to the user, like `python -m`
    return load_registry(settings.handlers)


@app.command()
@friendly
def migrate(
    dsn: Dsn = None,
    handlers: Handlers = None,
    data_dir: DataDir = None,
    downgrade: Annotated[str | None, typer.Option(
        help="Revert to this revision instead (`base` removes the orchestrator schema).",
        show_default=False)] = None,
) -> None:
    """Create or upgrade the orchestrator schema, then install each workflow's triggers."""
    settings = _settings(dsn=dsn, handlers=handlers, data_dir=data_dir)
    if downgrade is not None:
        target = settings.dsn or EmbeddedServer(settings.data_dir / "pgdata").start()
        schema.downgrade(target, downgrade)
        out.print(f"downgraded to {downgrade}")
        return
    with Orchestrator(settings, _registry(settings)) as orch:
        names = orch.migrate()
    out.print(f"schema at {schema.head_revision()}; workflows installed: {', '.join(names)}")


@app.command()
@friendly
def run(
    dsn: Dsn = None,
    listen_dsn: Annotated[str | None, _opt("listen_dsn")] = None,
    handlers: Handlers = None,
    data_dir: DataDir = None,
    concurrency: Annotated[int | None, _opt("concurrency")] = None,
    batch_size: Annotated[int | None, _opt("batch_size")] = None,
    pool_size: Annotated[int | None, _opt("pool_size")] = None,
    lease_s: Annotated[float | None, _opt("lease_s")] = None,
    poll_interval_s: Annotated[float | None, _opt("poll_interval_s")] = None,
    handler_timeout_s: Annotated[float | None, _opt("handler_timeout_s")] = None,
    max_attempts: Annotated[int | None, _opt("max_attempts")] = None,
    retry_base_s: Annotated[float | None, _opt("retry_base_s")] = None,
    retry_max_s: Annotated[float | None, _opt("retry_max_s")] = None,
    shutdown_grace_s: Annotated[float | None, _opt("shutdown_grace_s")] = None,
    until_idle: Annotated[bool, typer.Option(
        help="Exit once no event is pending or running (for scripts and tests).")] = False,
) -> None:
    """Dispatch events to handlers until stopped (Ctrl-C or SIGTERM stop gracefully)."""
    settings = _settings(**{k: v for k, v in locals().items() if k != "until_idle"})
    with Orchestrator(settings, _registry(settings)) as orch:
        dispatcher = orch.dispatcher(until_idle=until_idle)
        _stop_on_signals(dispatcher)
        started = time.monotonic()
        stats = dispatcher.run()
    elapsed = time.monotonic() - started
    summary = ", ".join(f"{k} {v}" for k, v in stats.as_dict().items() if v)
    err.print(f"dispatcher stopped after {elapsed:.1f}s: {summary or 'nothing to do'}")


def _stop_on_signals(dispatcher: Dispatcher) -> None:
    """First SIGINT/SIGTERM: stop gracefully. A second SIGINT: stop now (claims are released
    or expire; nothing is lost)."""
    def on_signal(signum: int, _frame: object) -> None:
        if signum == signal.SIGINT and dispatcher_stopping[0]:
            raise KeyboardInterrupt
        dispatcher_stopping[0] = True
        err.print("stopping: finishing the handlers in hand (Ctrl-C again to quit now)")
        dispatcher.stop()

    dispatcher_stopping = [False]
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


@db_app.command("url")
@friendly
def db_url(data_dir: DataDir = None) -> None:
    """Print the embedded server's URI (starting it if needed), e.g. for `psql "$(...)"`."""
    out.print(EmbeddedServer(_settings(data_dir=data_dir).data_dir / "pgdata").start(),
              soft_wrap=True)


@db_app.command("start")
@friendly
def db_start(data_dir: DataDir = None) -> None:
    """Start the embedded server (it keeps running until `orchestrator db stop`)."""
    server = EmbeddedServer(_settings(data_dir=data_dir).data_dir / "pgdata")
    out.print(f"embedded PostgreSQL running: {server.start()}", soft_wrap=True)


@db_app.command("stop")
@friendly
def db_stop(data_dir: DataDir = None) -> None:
    """Stop the embedded server."""
    server = EmbeddedServer(_settings(data_dir=data_dir).data_dir / "pgdata")
    server.stop()
    out.print("embedded PostgreSQL stopped")


def main() -> None:
    app()
