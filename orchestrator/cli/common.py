"""What every command shares: the typer app, the common options, settings and error handling.

Errors a user can fix (bad DSN, unmigrated database, broken handler module) print one line and
exit 1; usage errors exit 2; nothing prints a stack trace unless --debug is given.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from orchestrator import logs
from orchestrator.config import Settings, help_for
from orchestrator.db import redact
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.registry import Registry, load_registry

F = TypeVar("F", bound=Callable[..., Any])

# Options of the `orchestrator` command itself, and how many values each takes.
GLOBAL_OPTIONS = {"--log-level": 1, "--debug": 0, "--no-debug": 0}


def hoist_global_options(args: list[str]) -> list[str]:
    """``args`` with the global options that follow the command moved before it, so that
    `orchestrator run --log-level WARNING` means `orchestrator --log-level WARNING run`.
    Nothing after a ``--`` moves."""
    start = 0
    while start < len(args) and args[start].startswith("-"):
        start += 1 + GLOBAL_OPTIONS.get(args[start], 0)
    front, rest, moved = args[:start], [], []
    tokens = iter(args[start:])
    for token in tokens:
        name = token.split("=", 1)[0]
        if token == "--":
            rest += [token, *tokens]
        elif name in GLOBAL_OPTIONS:
            moved.append(token)
            if "=" not in token and GLOBAL_OPTIONS[name]:
                moved += [next(tokens, "")]
        else:
            rest.append(token)
    return [*front, *moved, *rest]


class Commands(TyperGroup):
    """The command group; global options are accepted after the command too."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(list(args)))


app = typer.Typer(
    cls=Commands,
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


def setting_option(name: str, flag: str | None = None) -> Any:
    """A flag for setting ``name`` (``--name``, or ``flag``): its documented meaning, default
    and env variable."""
    return typer.Option(flag or f"--{name.replace('_', '-')}", show_default=False,
                        help=help_for(name))


def switch_option(name: str) -> Any:
    """An on/off flag pair (``--listen/--no-listen``) for boolean setting ``name``."""
    flag = name.replace("_", "-")
    return typer.Option(f"--{flag}/--no-{flag}", show_default=False, help=help_for(name))


Dsn = Annotated[str | None, typer.Option(
    "--dsn", help="PostgreSQL connection string. Default: the embedded server. "
                  "Env: ORCHESTRATOR_DSN, then DATABASE_URL.", show_default=False)]
Handlers = Annotated[str | None, setting_option("handlers")]
DataDir = Annotated[Path | None, setting_option("data_dir")]
PasswordCommand = Annotated[str | None, setting_option("password_command")]
PasswordProvider = Annotated[str | None, setting_option("password_provider")]


def friendly(fn: F) -> F:
    """Turn OrchestratorError into one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OrchestratorError as exc:
            if _debug:
                raise
            err.print(f"[red]error:[/red] {escape(logs.printable(redact(str(exc))))}",
                      soft_wrap=True)
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
    logging.basicConfig(level=level, stream=sys.stderr)
    logs.configure("text")  # `run --log-format json` changes it
    # The pool's own reconnect chatter repeats what the dispatcher reports once.
    logging.getLogger("psycopg.pool").setLevel(max(level, logging.ERROR))
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))


def settings_from(**overrides: Any) -> Settings:
    return Settings.load(**overrides)


DEMO_HANDLERS = "orchestrator.demo.handlers"


def _is_demo_checkout(here: Path) -> bool:
    """Whether ``here`` is this project's checkout, whose ``handlers`` package is the demo's:
    served under its installed name, so that handler names match what `orchestrator demo`
    installed."""
    spec = importlib.util.find_spec(DEMO_HANDLERS)
    found = spec.submodule_search_locations if spec else None
    return bool(found) and (here / "handlers").resolve() in {
        Path(p).resolve() for p in found or ()}


def registry_from(settings: Settings) -> Registry:
    """The workflows to serve: those of ``settings.handlers``, else of a ``handlers`` package
    (or module) in the working directory. Raises ConfigError when there is neither."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a handler package next to the user, like `python -m`
    if settings.handlers:
        return load_registry(settings.handlers)
    here = Path.cwd()
    if (here / "handlers" / "__init__.py").is_file() or (here / "handlers.py").is_file():
        return load_registry(DEMO_HANDLERS if _is_demo_checkout(here) else "handlers")
    raise ConfigError(
        "no handlers to serve: pass --handlers with your workflows' package or module (or set "
        f"ORCHESTRATOR_HANDLERS), or run from a directory with a `handlers` package; {here} "
        "has none")




def print_json(data: Any) -> None:
    """JSON on stdout, one document, keys in a stable order."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


Json = Annotated[bool, typer.Option("--json", help="Print JSON (a stable, documented shape).")]
Workflow = Annotated[str | None, typer.Option(
    help="Workflow name (default: the only one installed).", show_default=False)]
