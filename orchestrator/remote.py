"""Remote handlers: a transition served by an HTTP endpoint, such as a serverless function.

A ``Remote`` is registered like a Python handler (``food_order.on("a", "b")(Remote(...))``).
For each event it POSTs the event as JSON (``REQUEST_VERSION``), signed (``signing``), and maps
the JSON answer to a handler's outcomes: the next state and values, nothing, or a retry. A
timeout, a refused connection, a non-2xx status or an answer that is not the documented JSON
raises RemoteHandlerError, so the engine retries with backoff and finally marks the event dead,
exactly as for a Python handler that raises. Calls to one endpoint run at most
``max_concurrency`` at once, over kept-alive connections.
"""

from __future__ import annotations

import hashlib
import json
import secrets as random_tokens
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from orchestrator import signing
from orchestrator.errors import RemoteHandlerError
from orchestrator.events import Event, Next, Retry

if TYPE_CHECKING:
    from orchestrator.runner import Context

REQUEST_VERSION = 1
OUTCOMES = ("next", "none", "retry")


class Remote:
    """A handler that calls ``url``. Its handler name is ``remote.<name>``.

    ``secrets``: the signing secrets (newest first); by default read from the environment
    variable ``secrets_env`` (comma-separated) at each call. ``headers`` go with every request
    (say a function key). The request may take the handler's whole timeout (``ctx.remaining_s``).
    """

    def __init__(self, name: str, url: str, *, secrets: Sequence[str] | None = None,
                 secrets_env: str = signing.SECRETS_ENV, max_concurrency: int = 4,
                 headers: Mapping[str, str] | None = None) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.__module__ = "remote"  # the registry names a handler <module>.<qualname>
        self.__name__ = self.__qualname__ = name
        self.url = url
        self.where = public_url(url)
        self.max_concurrency = max_concurrency
        self._secrets = list(secrets) if secrets is not None else None
        self._secrets_env = secrets_env
        self._headers = dict(headers or {})
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def __call__(self, event: Event, ctx: Context) -> Next | None:
        timeout_s = max(ctx.remaining_s, 0.001)
        trace = traceparent(event)
        body = json.dumps(request_body(event, timeout_s, trace), default=str).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": event.idempotency_key,
                   "traceparent": trace,
                   signing.HEADER: signing.sign(body, self.secrets())}
        if not self._slots.acquire(timeout=timeout_s):
            raise RemoteHandlerError(f"{self.where}: all {self.max_concurrency} connections "
                                     "stayed busy until the timeout")
        try:
            response = self.client().post(self.url, content=body, headers=headers,
                                          timeout=timeout_s)
        except httpx.TimeoutException:
            raise RemoteHandlerError(
                f"{self.where} did not answer within {timeout_s:.3g}s") from None
        except httpx.HTTPError as exc:
            reason = str(exc).replace(self.url, self.where) or type(exc).__name__
            raise RemoteHandlerError(f"{self.where}: {reason}") from None
        finally:
            self._slots.release()
        return outcome(response.status_code, response.headers, response.content, self.where)

    def secrets(self) -> list[str]:
        return self._secrets if self._secrets is not None else signing.secrets_from_env(
            self._secrets_env)

    def client(self) -> httpx.Client:
        """The endpoint's HTTP client (one per process), keeping connections alive."""
        with self._lock:
            if self._client is None:
                limits = httpx.Limits(max_connections=self.max_concurrency,
                                      max_keepalive_connections=self.max_concurrency)
                self._client = httpx.Client(limits=limits, headers=self._headers)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __repr__(self) -> str:
        return f"Remote({self.__name__!r}, {self.where!r})"


def request_body(event: Event, timeout_s: float, trace: str) -> dict[str, Any]:
    """The JSON a remote handler receives (version ``REQUEST_VERSION``; see the README)."""
    return {
        "version": REQUEST_VERSION,
        "id": event.id,
        "workflow": event.workflow,
        "key": event.key,
        "transition": {"column": event.column, "op": event.op, "from": event.old_value,
                       "to": event.new_value},
        "old_row": dict(event.old_row) if event.old_row else None,
        "new_row": dict(event.new_row),
        "changed": sorted(event.changed),
        "attempt": event.attempt,
        "idempotency_key": event.idempotency_key,
        "created_at": event.created_at.isoformat(),
        "timeout_s": round(timeout_s, 3),
        "trace": {"traceparent": trace},
    }


def outcome(status: int, headers: Mapping[str, str], content: bytes, where: str) -> Next | None:
    """A remote handler's answer as a handler outcome: a Next or None; raises Retry for a retry
    request (or a 429/503 with Retry-After) and RemoteHandlerError for anything else."""
    if status in (429, 503) and (after := _seconds(headers.get("retry-after"))) is not None:
        raise Retry(delay_s=after, reason=f"{where} answered {status}")
    if not 200 <= status < 300:
        text = content[:200].decode(errors="replace").strip()
        raise RemoteHandlerError(f"{where} answered HTTP {status}" + (f": {text}" if text else ""))
    try:
        answer = json.loads(content)
    except ValueError:
        raise RemoteHandlerError(f"{where} answered {status} without valid JSON") from None
    if not isinstance(answer, dict) or answer.get("outcome") not in OUTCOMES:
        raise RemoteHandlerError(f"{where}: the answer needs \"outcome\": one of {OUTCOMES}")
    if answer.get("version", REQUEST_VERSION) != REQUEST_VERSION:
        raise RemoteHandlerError(f"{where}: unsupported answer version {answer['version']!r}")
    return _as_outcome(answer, where)


def _as_outcome(answer: dict[str, Any], where: str) -> Next | None:
    if answer["outcome"] == "retry":
        delay = answer.get("delay_s")
        if delay is not None and (not isinstance(delay, int | float) or delay < 0):
            raise RemoteHandlerError(f"{where}: delay_s must be a number of seconds")
        raise Retry(delay_s=delay, reason=f"remote: {answer.get('reason') or 'retry requested'}")
    state, values = answer.get("state"), answer.get("values") or {}
    if answer["outcome"] == "none" or (state is None and not values):
        return None
    if not (state is None or isinstance(state, str)) or not isinstance(values, dict):
        raise RemoteHandlerError(f"{where}: \"state\" must be a string, \"values\" an object")
    return Next(state, values)


def traceparent(event: Event) -> str:
    """A W3C trace context: one trace per event (across its attempts), a new span per call."""
    trace_id = hashlib.sha256(event.idempotency_key.encode()).hexdigest()[:32]
    return f"00-{trace_id}-{random_tokens.token_hex(8)}-01"


def public_url(url: str) -> str:
    """``url`` without credentials or query (where function keys often travel)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
