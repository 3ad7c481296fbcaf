"""Orchestrator: settings, a registry and a store tied together; open it, then migrate or run.

    with Orchestrator(Settings.load(), load_registry("handlers")) as orch:
        orch.migrate()
        orch.dispatcher(until_idle=True).run()
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType

from orchestrator import credentials, db, schema
from orchestrator.config import Settings
from orchestrator.dispatcher import Dispatcher, dispatcher_name
from orchestrator.embedded import EmbeddedServer
from orchestrator.metrics import Metrics, connection_summary
from orchestrator.registry import Registry
from orchestrator.reports import Reports
from orchestrator.store import Store

log = logging.getLogger(__name__)


def embedded_server(settings: Settings) -> EmbeddedServer:
    """The embedded server of ``settings.data_dir`` (not started)."""
    return EmbeddedServer(settings.data_dir / "pgdata")


def resolve_dsn(settings: Settings, database: str | None = None) -> str:
    """The DSN to use: the configured one, else the embedded server's (started if needed), for
    its default database or ``database``."""
    if settings.dsn:
        return settings.dsn
    server = embedded_server(settings)
    return server.start(database) if database else server.start()


class Orchestrator:
    """Opens a pool on enter and closes it on exit. Raises DatabaseUnavailable on enter when the
    database cannot be reached.

    Connections: at most ``pool_size`` pooled work connections, plus one for LISTEN while a
    dispatcher runs. ``password`` (default: the settings' password_command or
    password_provider) is asked for the password of every new connection.
    """

    def __init__(self, settings: Settings, registry: Registry | None = None, *,
                 password: credentials.PasswordProvider | None = None) -> None:
        self.settings = settings
        self.registry = registry or Registry([])
        self.dsn = resolve_dsn(settings)
        self.password = credentials.watched(password or credentials.from_settings(settings))
        self.pool = db.make_pool(self.dsn, max_size=settings.pool_size, password=self.password,
                                 prepare=not settings.transaction_pooling,
                                 max_lifetime_s=settings.pool_max_lifetime_s,
                                 max_idle_s=settings.pool_max_idle_s)
        self.store = Store(self.pool, dispatcher=dispatcher_name(), lease_s=settings.lease_s,
                           lock_timeout_s=settings.lock_timeout_s)
        self.reports = Reports(self.pool)
        self._on_close: list[Callable[[], None]] = []
        self._dispatched = False

    def __enter__(self) -> Orchestrator:
        db.open_pool(self.pool, self.dsn, password=self.password)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for close in self._on_close:
            close()
        if self._dispatched and exc is None:  # a failure's one line stays the only one
            log.info("connections: %s", connection_summary(db.pool_stats(self.pool),
                                                           self.password))
        self.pool.close()

    def migrate(self) -> list[str]:
        """Upgrade the schema to the newest revision and install every workflow; their names."""
        schema.upgrade(self.dsn, password=self.password)
        return schema.install_registry(self.pool, self.registry)

    def dispatcher(self, *, until_idle: bool = False) -> Dispatcher:
        """A dispatcher on this pool; it LISTENs on ``listen_dsn`` (else ``dsn``) unless listen
        is off, in which case it only polls. With ``metrics_port`` set, its Prometheus metrics
        are served until this Orchestrator closes (ConfigError when the port cannot be bound)."""
        listen = (self.settings.listen_dsn or self.dsn) if self.settings.listen else None
        metrics = None
        if self.settings.metrics_port is not None:
            metrics = Metrics(self.registry, self.reports,
                              pool_stats=lambda: db.pool_stats(self.pool),
                              password=self.password)
            metrics.serve(self.settings.metrics_host, self.settings.metrics_port)
            self._on_close.append(metrics.close)
        dispatcher = Dispatcher(self.registry, self.store, self.settings, listen_dsn=listen,
                                until_idle=until_idle, password=self.password, observer=metrics)
        if metrics is not None:
            metrics.watch(dispatcher.listener)
        self._dispatched = True
        return dispatcher

