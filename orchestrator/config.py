"""Settings: one frozen dataclass, filled from defaults, then ``ORCHESTRATOR_*`` env, then flags.

Every field is documented where it is declared; ``orchestrator run --help`` shows the same text.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import platformdirs

from orchestrator.errors import ConfigError

ENV_PREFIX = "ORCHESTRATOR_"
LOG_FORMATS = ("text", "json")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> timedelta:
    """A duration written as numbers with units, ``3d``, ``12h``, ``1h30m``, ``90s`` (s, m, h,
    d, w). Raises ConfigError for anything else, or for none at all."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ConfigError(f"{text!r} is not a duration (like 3d, 12h, 30m or 1h30m)")
    return timedelta(seconds=sum(float(n) * DURATION_UNITS[u] for n, u in parts))


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("orchestrator", appauthor=False))


@dataclass(frozen=True, slots=True)
class Settings:
    """How the orchestrator connects and dispatches. Units are in the field names."""

    # Connection strings and the password command may hold secrets: repr (and so str, and
    # any error or log line showing the settings) leaves them out.
    dsn: str | None = field(default=None, repr=False,
                            metadata={"help": "PostgreSQL connection string."})
    listen_dsn: str | None = field(
        default=None, repr=False,
        metadata={"help": "Connection string for LISTEN (default: dsn)."}
    )
    listen: bool = field(
        default=True,
        metadata={"help": "Wake up on NOTIFY over one dedicated connection; off: poll only "
                          "(every poll_interval_s), where LISTEN is impossible."},
    )
    transaction_pooling: bool = field(
        default=False,
        metadata={"help": "dsn goes through a pooler in transaction mode (PgBouncer): no "
                          "server-side prepared statements; LISTEN then needs listen_dsn."},
    )
    password_command: str | None = field(
        default=None, repr=False,
        metadata={"help": "Shell command that prints the database password (a cloud IAM "
                          "token), run for every new connection."},
    )
    password_provider: str | None = field(
        default=None,
        metadata={"help": "module:function called for every new connection with its "
                          "parameters; returns the password (a cloud IAM token)."},
    )
    handlers: str | None = field(
        default=None,
        metadata={"help": "Python package or module holding the workflows (default: a "
                          "`handlers` package in the working directory)."},
    )
    concurrency: int = field(
        default=8, metadata={"help": "Handlers run at once by one dispatcher (sync ones on "
                                     "worker threads, async and remote ones on its event "
                                     "loop)."}
    )
    batch_size: int = field(
        default=64, metadata={"help": "Most events one claim statement takes."}
    )
    pool_size: int = field(
        default=10,
        metadata={"help": "Most pooled work connections (LISTEN adds one); handlers using "
                          "ctx.db each hold one while they run."},
    )
    pool_max_lifetime_s: float = field(
        default=3600.0,
        metadata={"help": "Seconds a pooled connection is used before it is replaced (each "
                          "gets up to 5% less, so they do not all go at once): set it below a "
                          "short-lived token's or a load balancer's connection lifetime."},
    )
    pool_max_idle_s: float = field(
        default=600.0,
        metadata={"help": "Seconds a pooled connection may sit unused before it is closed "
                          "(the pool keeps one)."},
    )
    lease_s: float = field(
        default=30.0,
        metadata={"help": "Seconds a claim is held before another dispatcher may take it over."},
    )
    poll_interval_s: float = field(
        default=1.0, metadata={"help": "Seconds between claims when no NOTIFY arrives."}
    )
    handler_timeout_s: float = field(
        default=30.0, metadata={"help": "Seconds a handler may run before it counts as failed."}
    )
    max_attempts: int = field(
        default=5, metadata={"help": "Attempts per event before it is dead (per handler too)."}
    )
    retry_base_s: float = field(
        default=1.0, metadata={"help": "Backoff cap after the first failure, doubled each time."}
    )
    retry_max_s: float = field(default=300.0, metadata={"help": "Largest backoff cap."})
    lock_timeout_s: float = field(
        default=2.0,
        metadata={"help": "Seconds a write-back waits for a row lock held elsewhere before the "
                          "attempt fails (and is retried)."},
    )
    listen_ping_s: float = field(
        default=5.0,
        metadata={"help": "Seconds between liveness checks of the LISTEN connection; one that "
                          "does not answer within as long is replaced."},
    )
    shutdown_grace_s: float = field(
        default=10.0,
        metadata={"help": "Seconds a stopping dispatcher waits for handlers before releasing."},
    )
    data_dir: Path = field(
        default_factory=_default_data_dir,
        metadata={"help": "Where the embedded PostgreSQL keeps its data."},
    )
    metrics_port: int | None = field(
        default=None,
        metadata={"help": "Serve Prometheus metrics on this port (/metrics); off when unset, "
                          "0 picks a free port."},
    )
    metrics_host: str = field(
        default="127.0.0.1",
        metadata={"help": "Address the metrics endpoint binds to (0.0.0.0: every interface)."},
    )
    log_format: str = field(
        default="text",
        metadata={"help": "text (for a person) or json (one object per line, for log "
                          "pipelines)."},
    )
    dashboard_host: str = field(
        default="127.0.0.1",
        metadata={"help": "Address the dashboard binds to; any other than localhost needs a "
                          "token."},
    )
    dashboard_port: int = field(default=8070, metadata={"help": "The dashboard's port."})
    dashboard_token: str | None = field(
        default=None, repr=False,
        metadata={"help": "Token the dashboard requires for redrives (required when bound to "
                          "an address other than localhost)."},
    )
    retention: timedelta = field(
        default=timedelta(days=3),
        metadata={"help": "How long finished events stay in the history (a duration: 3d, 12h, "
                          "90m); dispatchers remove older ones, one dispatcher at a time, by "
                          "whole hours. Dead events stay until redriven or pruned by hand."},
    )
    stuck_after_s: float = field(
        default=60.0,
        metadata={"help": "The dashboard calls a row stuck when it has been in a non-terminal "
                          "state this long."},
    )

    def __post_init__(self) -> None:
        for name in ("concurrency", "batch_size", "pool_size", "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lease_s", "poll_interval_s", "handler_timeout_s", "retry_base_s",
                     "lock_timeout_s", "listen_ping_s", "pool_max_lifetime_s",
                     "pool_max_idle_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.retry_max_s < self.retry_base_s:
            raise ConfigError("retry_max_s must be at least retry_base_s")
        if self.transaction_pooling and self.listen and not self.listen_dsn:
            raise ConfigError("LISTEN cannot work through a transaction pooler: give listen_dsn "
                              "(a direct connection) or turn listen off to poll only")
        if self.password_command and self.password_provider:
            raise ConfigError("give password_command or password_provider, not both")
        for name in ("metrics_port", "dashboard_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be a port number (0-65535), got {port}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format must be one of {', '.join(LOG_FORMATS)}, "
                              f"got {self.log_format!r}")
        if self.retention <= timedelta(0):
            raise ConfigError(f"retention must be positive, got {self.retention}")
        if self.stuck_after_s <= 0:
            raise ConfigError(f"stuck_after_s must be positive, got {self.stuck_after_s}")

    @classmethod
    def load(
        cls, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Defaults, then ``ORCHESTRATOR_<FIELD>`` from ``env``, then non-None ``overrides``.

        ``dsn`` also falls back to ``DATABASE_URL``. Raises ConfigError for a value that does
        not parse or is out of range.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None and f.name == "dsn":
                raw = env.get("DATABASE_URL")
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("retention"), str):
            values["retention"] = parse_duration(values["retention"])
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = str(f.type)
    if kind == "bool":
        return _parse_bool(f.name, raw)
    try:
        if kind in ("int", "int | None"):
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw).expanduser()
        if kind == "timedelta":
            return parse_duration(raw)
    except ConfigError:
        raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid duration "
                          "(like 3d, 12h, 30m or 1h30m)") from None
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid {kind}") from None
    return raw


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid bool (true or false)")


def help_for(name: str) -> str:
    """The documented meaning of setting ``name`` with its default, for CLI help."""
    for f in fields(Settings):
        if f.name == name:
            default = "" if f.default in (None, dataclasses.MISSING) else f" Default: {f.default}."
            if isinstance(f.default, timedelta):
                default = f" Default: {format_duration(f.default)}."
            return f"{f.metadata['help']}{default} Env: {ENV_PREFIX}{name.upper()}."
    raise KeyError(name)


def format_duration(value: timedelta) -> str:
    """``value`` in the largest unit that writes it whole (``3d``, ``36h``, ``90s``)."""
    seconds = value.total_seconds()
    for unit, size in sorted(DURATION_UNITS.items(), key=lambda u: -u[1]):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
