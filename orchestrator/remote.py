"""Remote handlers: a transition served by an HTTP endpoint, such as a serverless function.

A ``Remote`` is registered like a Python handler (``food_order.on("a", "b")(Remote(...))``).
For each event it POSTs the event as JSON, signed (``signing``): our own request
(``REQUEST_VERSION``), or with ``shape="hasura"`` the request of Hasura's event triggers
(``hasura``). It maps the answer to a handler's outcomes: the next state and values, nothing,
or a retry. A timeout, a refused connection, a non-2xx status or an answer that is not the
documented JSON raises RemoteHandlerError, so the engine retries with backoff and finally marks
the event dead, exactly as for a Python handler that raises. A Remote is an async handler: its
calls run on the async loop (``asyncloop``), at most ``max_concurrency`` at once, over
kept-alive connections; each call ends by the handler's timeout whatever the endpoint does
(``remote_http``), its answer is read up to ``max_response_bytes``, and a delay it asks for is
cut to ``max_delay_s``.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from orchestrator import asyncloop, hasura, remote_http, signing
from orchestrator.errors import DefinitionError, RemoteHandlerError
from orchestrator.events import Event, Next, Retry
from orchestrator.remote_http import retry_after_s

if TYPE_CHECKING:
    from orchestrator.runner import Context

REQUEST_VERSION = 1
OUTCOMES = ("next", "none", "retry")
MAX_RESPONSE_BYTES = 1_000_000
MAX_DELAY_S = 3600.0
SHAPES = ("v1", "hasura")
# Span ids need to be unique, not secret: a seeded PRNG, not a system call per call.
_spans = random.Random()


class Remote:
    """A handler that calls ``url``. Its handler name is ``remote.<name>``.

    ``secrets``: the signing secrets (newest first); by default read from the environment
    variable ``secrets_env`` (comma-separated) at each call. ``headers`` go with every request
    (say a function key). A call, connecting and reading included, ends by the handler's
    timeout (``ctx.remaining_s``); an answer longer than ``max_response_bytes`` fails the
    attempt; a retry delay the endpoint asks for (``delay_s``, ``Retry-After``) is cut to
    ``max_delay_s``. ``url`` must be https, or http to a loopback host (``localhost``,
    ``127.0.0.1``, ``::1``) unless ``allow_http``. ``proxy``: an HTTP(S) proxy's URL (default:
    the environment's: ``HTTPS_PROXY``, ``NO_PROXY``). ``shape``: the request's shape, ``"v1"``
    (ours) or ``"hasura"`` (Hasura's event triggers, ``hasura``; ``trigger`` is its trigger
    name, by default ``name``). Calls run on the async loop (``asyncloop``), no thread each.
    Raises DefinitionError for a URL, limit or shape it cannot use.
    """

    def __init__(self, name: str, url: str, *, secrets: Sequence[str] | None = None,
                 secrets_env: str = signing.SECRETS_ENV, max_concurrency: int = 4,
                 headers: Mapping[str, str] | None = None,
                 max_response_bytes: int = MAX_RESPONSE_BYTES, max_delay_s: float = MAX_DELAY_S,
                 allow_http: bool = False, proxy: str | None = None,
                 shape: str = "v1", trigger: str | None = None) -> None:
        if shape not in SHAPES:
            raise DefinitionError(f"shape must be one of {SHAPES}, not {shape!r}")
        if max_concurrency < 1:
            raise DefinitionError("max_concurrency must be at least 1")
        if max_response_bytes < 1 or not (math.isfinite(max_delay_s) and max_delay_s >= 0):
            raise DefinitionError("max_response_bytes must be positive and max_delay_s a "
                                  "finite number of seconds")
        check_url(url, allow_http=allow_http)
        self.__module__ = "remote"  # the registry names a handler <module>.<qualname>
        self.__name__ = self.__qualname__ = name
        self.url = url
        self.where = public_url(url)
        self.max_concurrency = max_concurrency
        self.max_response_bytes = max_response_bytes
        self.max_delay_s = max_delay_s
        self._secrets = list(secrets) if secrets is not None else None
        self._secrets_env = secrets_env
        self._headers = dict(headers or {})
        self._proxy = proxy
        self.shape = shape
        self.trigger = trigger or name
        self._slots = asyncio.Semaphore(max_concurrency)
        self._client: remote_http.Client | None = None

    async def __call__(self, event: Event, ctx: Context) -> Next | None:
        timeout_s = max(ctx.remaining_s, 0.001)
        ends = time.monotonic() + timeout_s
        trace = traceparent(event)
        if self.shape == "hasura":
            payload = hasura.request_body(event, ctx, self.trigger, trace)
        else:
            payload = request_body(event, timeout_s, trace)
        body = encode(payload)
        headers = {"Content-Type": "application/json", "Idempotency-Key": event.idempotency_key,
                   "traceparent": trace,
                   signing.HEADER: signing.sign(body, self.secrets())}
        answer = await self._post(body, headers, timeout_s, ends)
        if self.shape == "hasura":
            return hasura.outcome(answer.status, answer.headers, answer.content, self.where,
                                  max_delay_s=self.max_delay_s)
        return outcome(answer.status, answer.headers, answer.content, self.where,
                       max_delay_s=self.max_delay_s)

    async def _post(self, body: bytes, headers: dict[str, str], timeout_s: float,
                    ends: float) -> remote_http.Answer:
        """POST within one deadline, a free slot included. Raises RemoteHandlerError."""
        try:
            if self._slots.locked():  # else acquire() returns at once: spare the timer
                async with asyncio.timeout(timeout_s):
                    await self._slots.acquire()
            else:
                await self._slots.acquire()
        except TimeoutError:
            raise RemoteHandlerError(f"{self.where}: all {self.max_concurrency} connections "
                                     "stayed busy until the timeout") from None
        try:
            return await self._http().post(self.url, content=body, headers=headers,
                                           timeout_s=max(ends - time.monotonic(), 0.001),
                                           max_bytes=self.max_response_bytes)
        except remote_http.TimedOut:
            raise RemoteHandlerError(
                f"{self.where} did not answer within {timeout_s:.3g}s") from None
        except remote_http.TooLarge as exc:
            raise RemoteHandlerError(f"{self.where} answered {exc}; at most "
                                     f"{self.max_response_bytes} are read") from None
        except remote_http.CallFailed as exc:
            reason = str(exc).replace(self.url, self.where)
            raise RemoteHandlerError(f"{self.where}: {reason}") from None
        finally:
            self._slots.release()

    def secrets(self) -> list[str]:
        return self._secrets if self._secrets is not None else signing.secrets_from_env(
            self._secrets_env)

    def _http(self) -> remote_http.Client:
        """The endpoint's HTTP client (one per process, on the async loop), keeping
        connections alive."""
        if self._client is None:
            self._client = remote_http.Client(
                self.url, max_connections=self.max_concurrency, headers=self._headers,
                proxy=self._proxy)
            asyncloop.close_at_exit(self._client.close)
        return self._client

    def close(self) -> None:
        """Close the kept-alive connections (a later call opens new ones)."""
        client, self._client = self._client, None
        if client is not None:
            asyncloop.run(client.close())

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
        "session_variables": dict(event.session_variables),
        "related": dict(event.related),
        "attempt": event.attempt,
        "idempotency_key": event.idempotency_key,
        "created_at": event.created_at.isoformat(),
        "timeout_s": round(timeout_s, 3),
        "trace": {"traceparent": trace},
    }


def outcome(status: int, headers: Mapping[str, str], content: bytes, where: str, *,
            max_delay_s: float = MAX_DELAY_S) -> Next | None:
    """A remote handler's answer as a handler outcome: a Next or None; raises Retry for a retry
    request (or a 429/503 with Retry-After), its delay cut to ``max_delay_s``, and
    RemoteHandlerError for anything else, a number that is not finite included."""
    if status in (429, 503) and (after := retry_after_s(headers.get("retry-after"))) is not None:
        raise Retry(delay_s=min(after, max_delay_s), reason=f"{where} answered {status}")
    if not 200 <= status < 300:
        text = content[:200].decode(errors="replace").strip()
        raise RemoteHandlerError(f"{where} answered HTTP {status}" + (f": {text}" if text else ""))
    try:
        answer = json.loads(content, parse_constant=_not_finite, parse_float=_finite)
    except ValueError as exc:
        why = str(exc) if isinstance(exc, NotFinite) else "without valid JSON"
        raise RemoteHandlerError(f"{where} answered {status} {why}") from None
    if not isinstance(answer, dict) or answer.get("outcome") not in OUTCOMES:
        raise RemoteHandlerError(f"{where}: the answer needs \"outcome\": one of {OUTCOMES}")
    if answer.get("version", REQUEST_VERSION) != REQUEST_VERSION:
        raise RemoteHandlerError(f"{where}: unsupported answer version {answer['version']!r}")
    return _as_outcome(answer, where, max_delay_s)


def _as_outcome(answer: dict[str, Any], where: str, max_delay_s: float) -> Next | None:
    if answer["outcome"] == "retry":
        delay = answer.get("delay_s")
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)
                                  or delay < 0):
            raise RemoteHandlerError(f"{where}: delay_s must be a number of seconds")
        raise Retry(delay_s=None if delay is None else float(min(delay, max_delay_s)),
                    reason=f"remote: {answer.get('reason') or 'retry requested'}")
    state, values = answer.get("state"), answer.get("values") or {}
    if answer["outcome"] == "none" or (state is None and not values):
        return None
    if not (state is None or isinstance(state, str)) or not isinstance(values, dict):
        raise RemoteHandlerError(f"{where}: \"state\" must be a string, \"values\" an object")
    return Next(state, values)


class NotFinite(ValueError):
    """A JSON number that is not finite (NaN, Infinity, or too large for a float)."""


def _not_finite(name: str) -> Any:
    raise NotFinite(f"with {name}: only finite numbers are accepted")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotFinite(f"with {text[:20]}: only finite numbers are accepted")
    return value


def encode(payload: dict[str, Any]) -> bytes:
    """``payload`` as the JSON a request carries: orjson's encoding, or the standard
    library's where orjson has no answer (an integer past 64 bits, a key that is not a
    string); a value JSON has no type for is sent as its str(), dates and times included."""
    try:
        return orjson.dumps(payload, default=str, option=_AS_STR)
    except TypeError:
        return _ENCODER.encode(payload).encode()


_AS_STR = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
# One encoder for every call: json.dumps with an option builds its own again each time.
_ENCODER = json.JSONEncoder(default=str)


def traceparent(event: Event) -> str:
    """A W3C trace context: one trace per event (across its attempts), a new span per call."""
    trace_id = hashlib.sha256(event.idempotency_key.encode()).hexdigest()[:32]
    return f"00-{trace_id}-{_spans.getrandbits(64) or 1:016x}-01"


def public_url(url: str) -> str:
    """``url`` without credentials or query (where function keys often travel)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


LOOPBACK_NAMES = ("localhost",)


def check_url(url: str, *, allow_http: bool = False) -> None:
    """Raise DefinitionError unless ``url`` is https (or http to a loopback host, or any http
    with ``allow_http``) and names a host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise DefinitionError(f"remote handler URL {public_url(url)!r}: give an https:// URL")
    if parts.scheme == "http" and not (allow_http or is_loopback(host)):
        raise DefinitionError(
            f"remote handler URL {public_url(url)!r}: plain http is only for loopback hosts; "
            "use https, or Remote(..., allow_http=True) for a network you trust")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine: ``localhost`` or a loopback address."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
