"""The HTTP client of remote handlers: each call bounded in time and in size.

httpx bounds each network operation on its own (connecting, each read, each write): an
endpoint that sends its answer a byte at a time, each byte within the timeout, holds the caller
for as long as it likes. Here a call has one deadline, set for the calling thread by ``post``:
every operation the call makes (connect, TLS handshake, sending, each read of the headers and
of the body) waits at most for what is left of it, and then fails as a timeout. The body is read
up to a maximum size. A sync client does all of a call's I/O on the calling thread, so a
thread-local deadline is the call's.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

_call = threading.local()


class TooLarge(Exception):
    """The answer was longer than the call allowed."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What an endpoint answered: status, headers and the whole body."""

    status: int
    headers: httpx.Headers
    content: bytes


def client(url: str, *, max_connections: int, headers: Mapping[str, str],
           proxy: str | None = None) -> httpx.Client:
    """A client whose calls ``post`` bounds, keeping up to ``max_connections`` connections
    alive. ``proxy``: an HTTP(S) proxy's URL; by default the one the environment names for
    ``url`` (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``), as httpx would."""
    limits = httpx.Limits(max_connections=max_connections,
                          max_keepalive_connections=max_connections)
    return httpx.Client(transport=BoundedTransport(limits, proxy or environment_proxy(url)),
                        headers=dict(headers))


def post(http: httpx.Client, url: str, *, content: bytes, headers: Mapping[str, str],
         timeout_s: float, max_bytes: int) -> Answer:
    """POST ``content`` and read the answer, all within ``timeout_s`` seconds from now.
    Raises httpx.TimeoutException when the time runs out, TooLarge when the body exceeds
    ``max_bytes``, another httpx.HTTPError when the call fails otherwise."""
    with _deadline(timeout_s), http.stream("POST", url, content=content, headers=headers,
                                           timeout=timeout_s) as response:
        declared = response.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
            raise TooLarge(f"{declared} bytes")
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise TooLarge(f"more than {max_bytes} bytes")
        return Answer(response.status_code, response.headers, bytes(body))


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url``, or None (none, or NO_PROXY covers it)."""
    parts = urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    _call.deadline = time.monotonic() + seconds
    try:
        yield
    finally:
        _call.deadline = None


def _within(timeout: float | None, expired: type[httpcore.TimeoutException]) -> float | None:
    """``timeout`` cut to what is left of this thread's call; raises ``expired`` when nothing
    is (a zero timeout would make the socket non-blocking, not time out)."""
    deadline: float | None = getattr(_call, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    """A connection whose every operation ends by the call's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _within(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _within(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname,
                                             _within(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    """httpcore's own sockets, connected and used within the call's deadline."""

    def __init__(self) -> None:
        self._sockets = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _Stream(self._sockets.connect_tcp(
            host, port, _within(timeout, httpcore.ConnectTimeout), local_address,
            socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None
                            ) -> httpcore.NetworkStream:
        return _Stream(self._sockets.connect_unix_socket(
            path, _within(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._sockets.sleep(seconds)


class BoundedTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool on ``_Backend``. httpx takes no network
    backend, so the pool it would build is built here instead, with the same settings; httpx
    maps its errors as for its own."""

    def __init__(self, limits: httpx.Limits, proxy: str | None = None) -> None:
        options: dict[str, Any] = {
            "ssl_context": httpx.create_ssl_context(),
            "max_connections": limits.max_connections,
            "max_keepalive_connections": limits.max_keepalive_connections,
            "keepalive_expiry": limits.keepalive_expiry, "network_backend": _Backend()}
        if proxy is None:
            self._pool = httpcore.ConnectionPool(**options)
            return
        via = httpx.Proxy(proxy)
        self._pool = httpcore.HTTPProxy(
            proxy_url=httpcore.URL(scheme=via.url.raw_scheme, host=via.url.raw_host,
                                   port=via.url.port, target=via.url.raw_path),
            proxy_auth=via.raw_auth, proxy_headers=via.headers.raw,
            proxy_ssl_context=via.ssl_context, **options)
