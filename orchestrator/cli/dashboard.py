"""The `dashboard` command: the web dashboard under uvicorn."""

from __future__ import annotations

import socket
from typing import Annotated

import uvicorn

from orchestrator import web
from orchestrator.app import Orchestrator
from orchestrator.cli.common import DataDir, Dsn, app, err, friendly, setting_option, settings_from
from orchestrator.db import describe
from orchestrator.errors import ConfigError


@app.command()
@friendly
def dashboard(
    dsn: Dsn = None,
    data_dir: DataDir = None,
    host: Annotated[str | None, setting_option("dashboard_host", "--host")] = None,
    port: Annotated[int | None, setting_option("dashboard_port", "--port")] = None,
    token: Annotated[str | None, setting_option("dashboard_token", "--token")] = None,
    stuck_after_s: Annotated[float | None, setting_option("stuck_after_s")] = None,
) -> None:
    """Serve the web dashboard: live counts per state, backlog, lag, dead events (with
    redrive), stuck rows, events and each row's timeline. Binds to localhost by default."""
    settings = settings_from(dsn=dsn, data_dir=data_dir, dashboard_host=host,
                             dashboard_port=port, dashboard_token=token,
                             stuck_after_s=stuck_after_s, pool_size=4)
    web.check_binding(settings.dashboard_host, settings.dashboard_token)
    with Orchestrator(settings) as orch:
        orch.reports.installed_workflows()  # an unmigrated database: say so now, in one line
        sock = _bind(settings.dashboard_host, settings.dashboard_port)
        page = web.create_app(orch.reports, where=describe(orch.dsn),
                              host=settings.dashboard_host, token=settings.dashboard_token,
                              stuck_after_s=settings.stuck_after_s)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        err.print(f"dashboard on http://{shown}:{bound_port}/ ({describe(orch.dsn)}); "
                  "Ctrl-C stops", soft_wrap=True)
        server = uvicorn.Server(uvicorn.Config(page, log_level="warning", lifespan="on"))
        server.run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, or ConfigError in one line (address in use, unknown host)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        raise ConfigError(f"the dashboard cannot listen on {host}:{port}: "
                          f"{exc.strerror or exc}") from None
    return sock
