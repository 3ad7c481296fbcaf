"""Commands that set up and run the engine: migrate, run, db url|start|stop."""

from __future__ import annotations

import logging
import signal
import time
from typing import Annotated, Any

import typer

from orchestrator import credentials, gcpolicy, logs, schema
from orchestrator.app import Orchestrator, embedded_server, resolve_dsn
from orchestrator.cli.common import (
    DataDir,
    Dsn,
    Handlers,
    PasswordCommand,
    PasswordProvider,
    app,
    db_app,
    err,
    friendly,
    out,
    registry_from,
    setting_option,
    settings_from,
    switch_option,
)
from orchestrator.config import Settings
from orchestrator.dispatcher import Dispatcher

log = logging.getLogger("orchestrator.cli")


@app.command()
@friendly
def migrate(
    dsn: Dsn = None,
    handlers: Handlers = None,
    data_dir: DataDir = None,
    password_command: PasswordCommand = None,
    password_provider: PasswordProvider = None,
    downgrade: Annotated[str | None, typer.Option(
        help="Revert to this revision instead (`base` removes the orchestrator schema and the "
             "triggers it installed; your tables and rows stay).", show_default=False)] = None,
    schema_only: Annotated[bool, typer.Option(
        help="Create or upgrade the orchestrator schema only, installing no workflow (for an "
             "application that installs them from its own Alembic revisions).")] = False,
) -> None:
    """Create or upgrade the orchestrator schema, then install each workflow's triggers.

    It creates and changes nothing outside the `orchestrator` schema but those triggers.
    Behind a transaction-mode pooler, migrate over a direct connection (the migration holds a
    session lock)."""
    settings = settings_from(dsn=dsn, handlers=handlers, data_dir=data_dir,
                             password_command=password_command,
                             password_provider=password_provider)
    password = credentials.from_settings(settings)
    if downgrade is not None:
        if schema.downgrade(resolve_dsn(settings), downgrade, password=password):
            out.print(f"downgraded to {downgrade}")
        else:
            out.print("nothing to downgrade: the database has no orchestrator schema")
        return
    if schema_only:
        schema.upgrade(resolve_dsn(settings), password=password)
        out.print(f"schema at {schema.head_revision()}; no workflow installed (--schema-only)")
        return
    with Orchestrator(settings, registry_from(settings)) as orch:
        names = orch.migrate()
    out.print(f"schema at {schema.head_revision()}; workflows installed: {', '.join(names)}")


@app.command()
@friendly
def run(
    dsn: Dsn = None,
    listen_dsn: Annotated[str | None, setting_option("listen_dsn")] = None,
    listen: Annotated[bool | None, switch_option("listen")] = None,
    transaction_pooling: Annotated[bool | None, switch_option("transaction_pooling")] = None,
    password_command: PasswordCommand = None,
    password_provider: PasswordProvider = None,
    handlers: Handlers = None,
    data_dir: DataDir = None,
    concurrency: Annotated[int | None, setting_option("concurrency")] = None,
    batch_size: Annotated[int | None, setting_option("batch_size")] = None,
    pool_size: Annotated[int | None, setting_option("pool_size")] = None,
    pool_max_lifetime_s: Annotated[float | None, setting_option("pool_max_lifetime_s")] = None,
    pool_max_idle_s: Annotated[float | None, setting_option("pool_max_idle_s")] = None,
    lease_s: Annotated[float | None, setting_option("lease_s")] = None,
    poll_interval_s: Annotated[float | None, setting_option("poll_interval_s")] = None,
    handler_timeout_s: Annotated[float | None, setting_option("handler_timeout_s")] = None,
    max_attempts: Annotated[int | None, setting_option("max_attempts")] = None,
    retry_base_s: Annotated[float | None, setting_option("retry_base_s")] = None,
    retry_max_s: Annotated[float | None, setting_option("retry_max_s")] = None,
    lock_timeout_s: Annotated[float | None, setting_option("lock_timeout_s")] = None,
    listen_ping_s: Annotated[float | None, setting_option("listen_ping_s")] = None,
    shutdown_grace_s: Annotated[float | None, setting_option("shutdown_grace_s")] = None,
    metrics_port: Annotated[int | None, setting_option("metrics_port")] = None,
    metrics_host: Annotated[str | None, setting_option("metrics_host")] = None,
    log_format: Annotated[str | None, setting_option("log_format")] = None,
    retention: Annotated[str | None, setting_option("retention")] = None,
    until_idle: Annotated[bool, typer.Option(
        help="Exit once no event of the served workflows is pending or running (for scripts "
             "and tests).")] = False,
) -> None:
    """Dispatch events to handlers until stopped (Ctrl-C or SIGTERM stop gracefully)."""
    settings = settings_from(**{k: v for k, v in locals().items() if k != "until_idle"})
    logs.configure(settings.log_format)
    with Orchestrator(settings, registry_from(settings)) as orch:
        dispatcher = orch.dispatcher(until_idle=until_idle)
        _stop_on_signals(dispatcher)
        gcpolicy.tune()  # start-up is done: see gcpolicy
        started = time.monotonic()
        stats = dispatcher.run()
    elapsed = time.monotonic() - started
    summary = ", ".join(f"{k} {v}" for k, v in stats.as_dict().items() if v)
    _say(settings, f"dispatcher stopped after {elapsed:.1f}s: {summary or 'nothing to do'}",
         {"elapsed_s": round(elapsed, 3), "stats": stats.as_dict()})


def _say(settings: Settings, message: str, fields: dict[str, Any] | None = None) -> None:
    """A word to the operator: plain on stderr, or a log line when logs are JSON (so that
    every line a log pipeline reads is one object)."""
    if settings.log_format == "json":
        log.info(message, extra={"fields": fields or {}})
    else:
        err.print(message)


def _stop_on_signals(dispatcher: Dispatcher) -> None:
    """First SIGINT/SIGTERM: stop gracefully. A second SIGINT: stop now (claims are released
    or expire; nothing is lost)."""
    def on_signal(signum: int, _frame: object) -> None:
        if signum == signal.SIGINT and dispatcher_stopping[0]:
            raise KeyboardInterrupt
        dispatcher_stopping[0] = True
        _say(dispatcher.settings,
             "stopping: finishing the handlers in hand (Ctrl-C again to quit now)")
        dispatcher.stop()

    dispatcher_stopping = [False]
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


@db_app.command("url")
@friendly
def db_url(data_dir: DataDir = None) -> None:
    """Print the embedded server's URI (starting it if needed), e.g. for `psql "$(...)"`."""
    out.print(embedded_server(settings_from(data_dir=data_dir)).start(), soft_wrap=True)


@db_app.command("start")
@friendly
def db_start(data_dir: DataDir = None) -> None:
    """Start the embedded server (it keeps running until `orchestrator db stop`)."""
    server = embedded_server(settings_from(data_dir=data_dir))
    out.print(f"embedded PostgreSQL running: {server.start()}", soft_wrap=True)


@db_app.command("stop")
@friendly
def db_stop(data_dir: DataDir = None) -> None:
    """Stop the embedded server."""
    embedded_server(settings_from(data_dir=data_dir)).stop()
    out.print("embedded PostgreSQL stopped")
