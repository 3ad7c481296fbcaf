"""The dashboard: a small ASGI app (Starlette) over the operator verbs of ``admin``.

Reads are plain JSON endpoints; the page polls the overview, which a Pulse samples from the
database on its own timer. The one state-changing action, redrive, calls ``admin.redrive``,
the code path of ``orchestrator retry``. It must come as JSON from the page's own origin (so
another site cannot forge it from an operator's browser) and, when a token is configured,
carry it in the ``X-Orchestrator-Token`` header.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from orchestrator import admin
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.reports import Reports
from orchestrator.web import diagram, explain
from orchestrator.web.pulse import Pulse

HERE = Path(__file__).resolve().parent
TOKEN_HEADER = "X-Orchestrator-Token"
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
MAX_LIMIT = 500


def is_local(host: str) -> bool:
    """Whether ``host`` is this machine only (a loopback address or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Raise ConfigError when the dashboard would listen beyond this machine without a token."""
    if not is_local(host) and not token:
        raise ConfigError(f"the dashboard would listen on {host}, beyond this machine: give it "
                          "a token for redrives (--token or ORCHESTRATOR_DASHBOARD_TOKEN)")


def create_app(store: Reports, *, where: str, host: str = "127.0.0.1", token: str | None = None,
               stuck_after_s: float = 60.0, refresh_s: float = 2.0) -> Starlette:
    """The dashboard over ``store``. ``where`` names the database on the page; ``host`` is
    the address it is bound to (requests for another host name are refused when local)."""
    pulse = Pulse(store, stuck_after_s, every_s=refresh_s)
    pages = Jinja2Templates(directory=HERE / "templates")

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        pulse.start()
        yield
        pulse.stop()

    def index(request: Request) -> Response:
        flows = [{"name": wf.name, "table": wf.qualified_table, "svg": diagram.svg(wf),
                  "states": wf.states, "terminal": sorted(wf.terminal)}
                 for wf in admin.workflows(store).values()]
        plain = [{k: v for k, v in f.items() if k != "svg"} for f in flows]
        return pages.TemplateResponse(request, "index.html", {
            "where": where, "workflows": flows, "flows_json": plain,
            "stuck_after_s": stuck_after_s,
            "refresh_ms": int(refresh_s * 1000), "token_required": bool(token)})

    def overview(_: Request) -> Response:
        return _json(pulse.snapshot())

    def events(request: Request) -> Response:
        q = request.query_params
        return _json(admin.events(store, status=q.get("status") or None,
                                  workflow=q.get("workflow") or None, row=q.get("row") or None,
                                  search=q.get("search") or None, limit=_limit(q.get("limit"))))

    def rows(request: Request) -> Response:
        q = request.query_params
        return _json(_rows(store, q.get("workflow") or None, q.get("state") or None,
                           stuck_after_s if q.get("stuck") else None, _limit(q.get("limit"))))

    def history(request: Request) -> Response:
        q = request.query_params
        wf = admin.pick_workflow(store, q.get("workflow") or None)
        return _json(admin.history(store, wf, q.get("key", "").strip()))

    async def redrive(request: Request) -> Response:
        if (refused := _refuse(request, token)) is not None:
            return refused
        body = await request.json()
        if not isinstance(body, dict):
            raise OrchestratorError("send a JSON object")
        dry_run = bool(body.get("dry_run"))
        chosen = admin.redrive(store, ids=[int(i) for i in body.get("ids") or []],
                               all_dead=bool(body.get("dead")),
                               handler=body.get("handler") or None,
                               workflow=body.get("workflow") or None, dry_run=dry_run)
        return _json({"dry_run": dry_run, "events": chosen})

    routes = [
        Route("/", _guarded(index)),
        Route("/api/overview", _guarded(overview)),
        Route("/api/events", _guarded(events)),
        Route("/api/rows", _guarded(rows)),
        Route("/api/history", _guarded(history)),
        Route("/api/redrive", _guarded_async(redrive), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = ([Middleware(TrustedHostMiddleware, allowed_hosts=[*LOCAL_NAMES, "[::1]"])]
                  if is_local(host) else [])
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


def _rows(store: Reports, workflow: str | None, state: str | None, stuck_after_s: float | None,
          limit: int) -> list[dict[str, Any]]:
    """Rows of one state (newest first) or, with ``stuck_after_s``, every row stuck that long
    in a non-terminal state (oldest first), each with why it is there."""
    known = admin.workflows(store)
    if stuck_after_s is None:
        wf = admin.pick_workflow(store, workflow)
        if state not in wf.states:
            raise OrchestratorError(f"workflow {wf.name!r} has no state {state!r}")
        chosen = [(wf, [state])]
    else:
        flows = [admin.pick_workflow(store, workflow)] if workflow else list(known.values())
        chosen = [(wf, [s for s in wf.states if s not in wf.terminal]) for wf in flows]
    found = []
    for wf, states in chosen:
        for row in store.rows_in_states(wf, states, older_than_s=stuck_after_s or 0.0,
                                        oldest_first=stuck_after_s is not None, limit=limit):
            why = "finished" if row["state"] in wf.terminal else explain.why(row)
            found.append(row | {"workflow": wf.name, "why": why})
    if stuck_after_s is not None:  # oldest first across workflows; no event at all: first
        found.sort(key=lambda r: float("inf") if r["age_s"] is None else r["age_s"],
                   reverse=True)
    return found[:limit]


def _refuse(request: Request, token: str | None) -> Response | None:
    """Why a state-changing request is refused, or None. It must be JSON (a form on another
    site cannot send that without the browser asking first), from this page's origin, and
    carry the token when there is one."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return _json({"error": "send JSON (Content-Type: application/json)"}, 415)
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        return _json({"error": f"requests from {origin} are not accepted"}, 403)
    given = request.headers.get(TOKEN_HEADER, "")
    if token and not secrets.compare_digest(given.encode(), token.encode()):
        return _json({"error": "this dashboard needs its token for redrives"}, 401)
    return None


def _guarded(view: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """Errors an operator can fix become a JSON error: 404 for an unknown row, else 400."""
    def run(request: Request) -> Response:
        try:
            return view(request)
        except OrchestratorError as exc:
            return _error(exc)
    return run


def _guarded_async(view: Callable[[Request], Any]) -> Callable[[Request], Any]:
    async def run(request: Request) -> Response:
        try:
            response: Response = await view(request)
            return response
        except OrchestratorError as exc:
            return _error(exc)
        except (ValueError, TypeError) as exc:  # a body that is not JSON, an id not a number
            return _json({"error": f"bad request: {exc}"}, 400)
    return run


def _error(exc: OrchestratorError) -> Response:
    return _json({"error": str(exc)}, 404 if isinstance(exc, admin.UnknownRow) else 400)


def _limit(raw: str | None) -> int:
    try:
        return max(1, min(MAX_LIMIT, int(raw or 100)))
    except ValueError:
        raise OrchestratorError(f"limit must be a number, not {raw!r}") from None


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, default=_plain, separators=(",", ":"))
    return Response(body, status, media_type="application/json")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot send {type(value).__name__} as JSON")
