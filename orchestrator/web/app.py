"""The dashboard: a small ASGI app (Starlette) over the operator verbs of ``admin``.

Reads are plain JSON endpoints; the page polls the overview, which a Pulse samples from the
database on its own timer. The one state-changing action, redrive, calls ``admin.redrive``
(the code path of ``orchestrator retry``) in a worker thread. It must come as JSON from the
page's own origin (so another site cannot forge it from an operator's browser) and, when a
token is configured, carry it in the ``X-Orchestrator-Token`` header.

Every response forbids framing (``X-Frame-Options``, CSP ``frame-ancestors``: no other site
can put the page under an operator's click) and allows the page only its own scripts and
styles. Bound beyond this machine, the expensive reads (rows, a text search of events) go
through a ``Throttle``: one at a time, a repeat within the refresh answered from the last.

Each endpoint is a named function over the ``Dashboard`` kept in the app's state. An
OrchestratorError becomes a JSON error: 503 when the database is unreachable, 404 for an
unknown row, 429 while another expensive read runs, 400 for any other request the operator can
fix.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator import admin
from orchestrator.errors import Busy, ConfigError, DatabaseUnavailable, OrchestratorError
from orchestrator.reports import Reports
from orchestrator.web import diagram, explain
from orchestrator.web.pulse import Pulse
from orchestrator.web.throttle import Throttle

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
TOKEN_HEADER = "X-Orchestrator-Token"
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
MAX_LIMIT = 500
MAX_REDRIVE_IDS = 1000
MAX_SEARCH_CHARS = 200
PAGES = Jinja2Templates(directory=HERE / "templates")
# Sent with every response. The page loads only its own script and styles (its data block is
# JSON, not run); the icon is a data: URL.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


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


class SecurityHeaders:
    """ASGI middleware adding ``SECURITY_HEADERS`` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


@dataclass(frozen=True, slots=True)
class Dashboard:
    """What the endpoints share: the store, the pulse sampling it, the page's settings, and
    the throttle of expensive reads (None on localhost). Kept in the app's
    ``state.dashboard``."""

    store: Reports
    pulse: Pulse
    where: str
    token: str | None
    stuck_after_s: float
    refresh_s: float
    throttle: Throttle | None

    def expensive(self, question: Any, read: Callable[[], T]) -> T:
        """``read()``, through the throttle when there is one (raises Busy)."""
        return read() if self.throttle is None else self.throttle.run(question, read)


def create_app(store: Reports, *, where: str, host: str = "127.0.0.1", token: str | None = None,
               stuck_after_s: float = 60.0, refresh_s: float = 2.0) -> Starlette:
    """The dashboard over ``store``. ``where`` names the database on the page; ``host`` is
    the address it is bound to (requests for another host name are refused when local)."""
    local = is_local(host)
    middleware = [Middleware(SecurityHeaders)]
    if local:
        middleware.append(Middleware(TrustedHostMiddleware,
                                     allowed_hosts=[*LOCAL_NAMES, "[::1]"]))
    app = Starlette(routes=ROUTES, middleware=middleware, lifespan=_lifespan,
                    exception_handlers={OrchestratorError: _error})
    app.state.dashboard = Dashboard(store, Pulse(store, stuck_after_s, every_s=refresh_s),
                                    where, token, stuck_after_s, refresh_s,
                                    None if local else Throttle(refresh_s))
    return app


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    pulse = _dashboard(app).pulse
    await run_in_threadpool(pulse.start)  # its first sample reads the database
    yield
    await run_in_threadpool(pulse.stop)


def _dashboard(app: Starlette) -> Dashboard:
    dashboard: Dashboard = app.state.dashboard
    return dashboard


# Plain (def) endpoints read the database: Starlette runs them in its thread pool.

def index(request: Request) -> Response:
    """The page, with each workflow's diagram drawn in."""
    dash = _dashboard(request.app)
    flows = [{"name": wf.name, "table": wf.qualified_table, "svg": diagram.svg(wf),
              "states": wf.states, "terminal": sorted(wf.terminal)}
             for wf in admin.workflows(dash.store).values()]
    plain = [{k: v for k, v in f.items() if k != "svg"} for f in flows]
    return PAGES.TemplateResponse(request, "index.html", {
        "where": dash.where, "workflows": flows, "flows_json": plain,
        "stuck_after_s": dash.stuck_after_s, "refresh_ms": int(dash.refresh_s * 1000),
        "token_required": bool(dash.token)})


def overview(request: Request) -> Response:
    """The pulse's latest sample (no database read)."""
    return _json(_dashboard(request.app).pulse.snapshot())


def events(request: Request) -> Response:
    """Events, newest first; a text search scans them all, so it is an expensive read."""
    q, dash = request.query_params, _dashboard(request.app)
    search = q.get("search") or None
    if search is not None and len(search) > MAX_SEARCH_CHARS:
        raise OrchestratorError(f"search at most {MAX_SEARCH_CHARS} characters")
    status, workflow, row = (q.get(name) or None for name in ("status", "workflow", "row"))
    limit = _limit(q.get("limit"))

    def read() -> list[dict[str, Any]]:
        return admin.events(dash.store, status=status, workflow=workflow, row=row,
                            search=search, limit=limit)

    question = ("events", status, workflow, row, search, limit)
    return _json(read() if search is None else dash.expensive(question, read))


def rows(request: Request) -> Response:
    """Rows of a state, or the stuck ones: an expensive read (up to EXAMINE_ROWS per state)."""
    q, dash = request.query_params, _dashboard(request.app)
    asked = (q.get("workflow") or None, q.get("state") or None,
             dash.stuck_after_s if q.get("stuck") else None, _limit(q.get("limit")))
    return _json(dash.expensive(("rows", *asked), lambda: _rows(dash.store, *asked)))


def history(request: Request) -> Response:
    q, store = request.query_params, _dashboard(request.app).store
    wf = admin.pick_workflow(store, q.get("workflow") or None)
    return _json(admin.history(store, wf, q.get("key", "").strip()))


async def redrive(request: Request) -> Response:
    """``admin.redrive`` for a JSON body ``{"ids": [...]}`` or ``{"dead": true, "handler":
    ..., "workflow": ...}``, with ``"dry_run"``; run in a thread, off the event loop."""
    dash = _dashboard(request.app)
    if (refused := _refuse(request, dash.token)) is not None:
        return refused
    try:
        asked = _redrive_request(await request.json())
    except (ValueError, TypeError) as exc:  # a body that is not JSON, an id not a number
        return _json({"error": f"bad request: {exc}"}, 400)
    chosen = await run_in_threadpool(admin.redrive, dash.store, **asked)
    return _json({"dry_run": asked["dry_run"], "events": chosen})


ROUTES = [
    Route("/", index),
    Route("/api/overview", overview),
    Route("/api/events", events),
    Route("/api/rows", rows),
    Route("/api/history", history),
    Route("/api/redrive", redrive, methods=["POST"]),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]


def _redrive_request(body: Any) -> dict[str, Any]:
    """``admin.redrive``'s keywords from a request body. Raises OrchestratorError for a body
    that is not an object, TypeError or ValueError for a field of the wrong kind."""
    if not isinstance(body, dict):
        raise OrchestratorError("send a JSON object")
    texts = {field: body.get(field) or None for field in ("handler", "workflow")}
    for field, value in texts.items():
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{field} must be a string")
    ids = body.get("ids") or []
    if not isinstance(ids, list) or len(ids) > MAX_REDRIVE_IDS or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise TypeError(f"ids must be a list of at most {MAX_REDRIVE_IDS} event ids (numbers)")
    return {"ids": ids, "all_dead": bool(body.get("dead")),
            "dry_run": bool(body.get("dry_run")), **texts}


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


async def _error(_: Request, exc: Exception) -> Response:
    """An OrchestratorError as a JSON error: 503 when the database cannot be reached (try
    again later), 404 for an unknown row, 429 while another expensive read runs (again in a
    second), else 400 (the request asks for something wrong)."""
    if isinstance(exc, Busy):
        response = _json({"error": str(exc)}, 429)
        response.headers["Retry-After"] = "1"
        return response
    status = (503 if isinstance(exc, DatabaseUnavailable)
              else 404 if isinstance(exc, admin.UnknownRow) else 400)
    return _json({"error": str(exc)}, status)


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
