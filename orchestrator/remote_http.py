"""The HTTP client of remote handlers: each call bounded in time and in size.

Calls run on an asyncio loop (``asyncloop``) over libcurl's multi interface (pycurl). libcurl
speaks HTTP in C and tells the loop which sockets to watch and when its next timeout falls, so
a call waiting on the network holds no thread and costs the loop little: the loop's Python
work per call is a handful of option settings and callbacks. A call has one deadline, which
libcurl keeps (``TIMEOUT_MS``): connecting, the TLS handshake, sending, and every read of the
headers and of the body all happen before it, and when it passes the transfer is dropped, so
an endpoint that sends its answer a byte at a time fails the call on time. The body is read up
to a maximum size; a longer declared length stops the call at the headers. Redirects are not
followed. Certificates are verified against certifi's CAs, or ``SSL_CERT_FILE`` /
``SSL_CERT_DIR`` when set (the rule httpx and requests follow).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import selectors
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import certifi
import pycurl

# libcurl's longest timeout (a C long of milliseconds on every platform): about 24 days.
MAX_TIMEOUT_MS = 2**31 - 1


class CallFailed(Exception):
    """The call did not bring back an answer (refused, reset, unreadable)."""


class TimedOut(CallFailed):
    """The call's deadline passed before the whole answer was read."""


class TooLarge(CallFailed):
    """The answer was longer than the call allowed."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What an endpoint answered: status, headers (names in lower case) and the whole body."""

    status: int
    headers: Headers
    content: bytes


class Headers(Mapping[str, str]):
    """An answer's headers, parsed from its lines when first read: a successful call's are
    seldom read at all."""

    __slots__ = ("_lines", "_parsed")

    def __init__(self, lines: list[bytes]) -> None:
        self._lines = lines
        self._parsed: dict[str, str] | None = None

    def _headers(self) -> dict[str, str]:
        if self._parsed is None:
            self._parsed = parse_headers(self._lines)
        return self._parsed

    def __getitem__(self, name: str) -> str:
        return self._headers()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers())

    def __len__(self) -> int:
        return len(self._headers())


def parse_headers(lines: list[bytes]) -> dict[str, str]:
    """The header lines of the last answer (after any 1xx one), names in lower case, a name
    given twice with its values joined by commas."""
    headers: dict[str, str] = {}
    for line in lines:
        if line.startswith(b"HTTP/"):
            headers = {}  # a new answer begins
            continue
        name, colon, value = line.partition(b":")
        if colon:
            key, text = name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


class _Call:
    """One request in flight: the answer as libcurl hands it over (its header lines as they
    come, the body read up to ``max_bytes``) and the future its caller awaits."""

    __slots__ = ("body", "future", "lines", "max_bytes", "settled", "size", "timeout_s")

    def __init__(self, future: asyncio.Future[Answer], max_bytes: int, timeout_s: float) -> None:
        self.future = future
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.lines: list[bytes] = []
        self.body: list[bytes] = []
        self.size = 0
        self.settled = False

    def write(self, chunk: bytes) -> int | None:
        """A piece of the body; one past the limit stops the transfer (a return value other
        than None tells libcurl to abort)."""
        self.size += len(chunk)
        if self.size > self.max_bytes:
            return 0
        self.body.append(chunk)
        return None


class Client:
    """Kept-alive connections to one endpoint, at most ``max_connections`` of them.
    ``proxy``: an HTTP(S) proxy's URL; by default the one the environment names for ``url``
    (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``). Used on one event loop."""

    def __init__(self, url: str, *, max_connections: int, headers: Mapping[str, str],
                 proxy: str | None = None) -> None:
        self._proxy = proxy or environment_proxy(url)
        # Only where TLS may be spoken: finding the trust store is not free.
        tls = any(u and urlsplit(u).scheme == "https" for u in (url, self._proxy))
        self._trust = trust_store() if tls else ()
        # What a connection is opened to, as a refused one names it.
        self._target = (f"proxy {host_port(self._proxy)}" if self._proxy
                        else host_port(url))
        # "Expect:": no 100-continue round trip before a body.
        self._headers = [*(f"{name}: {value}" for name, value in headers.items()), "Expect:"]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[pycurl.Curl] = []
        self._busy: dict[pycurl.Curl, _Call] = {}
        self._sockets = selectors.DefaultSelector()
        self._watched: dict[int, selectors.SelectorKey] = {}  # the selector's keys, by socket
        self._selecting = False
        self._timer: asyncio.TimerHandle | None = None
        self._multi = pycurl.CurlMulti()
        for option, value in ((pycurl.M_MAX_TOTAL_CONNECTIONS, max_connections),
                              (pycurl.M_MAX_HOST_CONNECTIONS, max_connections),
                              (pycurl.M_MAXCONNECTS, max_connections),
                              (pycurl.M_SOCKETFUNCTION, self._watch),
                              (pycurl.M_TIMERFUNCTION, self._time)):
            self._multi.setopt(option, value)

    async def post(self, url: str, *, content: bytes, headers: Mapping[str, str],
                   timeout_s: float, max_bytes: int) -> Answer:
        """POST ``content`` and read the answer, all within ``timeout_s`` seconds from now.
        Raises TimedOut when the time runs out, TooLarge when the body exceeds ``max_bytes``,
        CallFailed when the call fails otherwise. libcurl keeps the deadline (connecting, TLS,
        sending and every read), so a call costs the loop no timer of its own."""
        self._loop = loop = asyncio.get_running_loop()
        call = _Call(loop.create_future(), max_bytes, timeout_s)
        timeout_ms = max(1, math.ceil(min(timeout_s * 1000, MAX_TIMEOUT_MS)))
        header_lines = [*self._headers, *(f"{k}: {v}" for k, v in headers.items())]
        curl = self._idle.pop() if self._idle else self._curl()
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.POSTFIELDS, content)
        curl.setopt(pycurl.HTTPHEADER, header_lines)
        curl.setopt(pycurl.TIMEOUT_MS, timeout_ms)
        curl.setopt(pycurl.MAXFILESIZE_LARGE, max_bytes)  # a longer declared length: not read
        curl.setopt(pycurl.HEADERFUNCTION, call.lines.append)
        curl.setopt(pycurl.WRITEFUNCTION, call.write)
        self._multi.add_handle(curl)
        self._busy[curl] = call
        try:
            return await call.future
        finally:
            if not call.settled:  # the caller was cancelled: drop the transfer
                self._release(curl)

    def _curl(self) -> pycurl.Curl:
        """A transfer handle with the options every call shares. Connections live in the
        multi handle, so any handle reuses any kept-alive connection."""
        curl = pycurl.Curl()
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        curl.setopt(pycurl.PROXY, self._proxy or "")  # "": no proxy, whatever libcurl reads
        for option, value in self._trust:
            curl.setopt(option, value)
        return curl

    def _release(self, curl: pycurl.Curl) -> None:
        self._busy.pop(curl).settled = True
        self._multi.remove_handle(curl)
        self._idle.append(curl)

    def _watch(self, what: int, fd: int, multi: object, socket: object) -> None:
        """libcurl's socket callback: watch ``fd`` for what it waits for (POLL_REMOVE: none).
        libcurl's sockets are watched by a selector of the client's own, whose descriptor the
        loop watches: adding and dropping a socket for each call is then one system call,
        with no handle of the loop's made or dropped, and the loop wakes the client once for
        all the sockets that are ready."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        now = ((selectors.EVENT_READ if what & pycurl.POLL_IN else 0)
               | (selectors.EVENT_WRITE if what & pycurl.POLL_OUT else 0))
        key = self._watched.get(fd)
        if not now:
            if key is not None:
                del self._watched[fd]
                self._sockets.unregister(fd)
            return
        if key is None:
            self._watched[fd] = self._sockets.register(fd, now)
        elif key.events != now:
            try:
                self._watched[fd] = self._sockets.modify(fd, now)
            except OSError:  # its descriptor was closed and the number given to a new socket
                # (the selector has let go of it)
                self._watched[fd] = self._sockets.register(fd, now)
        if not self._selecting:
            loop.add_reader(self._sockets.fileno(), self._ready)
            self._selecting = True

    def _ready(self) -> None:
        """The sockets that are ready: libcurl acts on each, then the finished calls settle.
        A socket dropped (or its number taken by a new one) while acting on an earlier one is
        passed over."""
        for key, events in self._sockets.select(0):
            if self._watched.get(key.fd) is not key:
                continue
            event = ((pycurl.CSELECT_IN if events & selectors.EVENT_READ else 0)
                     | (pycurl.CSELECT_OUT if events & selectors.EVENT_WRITE else 0))
            if not self._action(key.fd, event):
                return
        self._settle_finished()

    def _time(self, ms: int) -> None:
        """libcurl's timer callback: act on its timeouts in ``ms`` milliseconds (-1: none).
        libcurl may not be re-entered from its own callbacks, hence the loop's timer. A timer
        already set to fire sooner is kept: firing early only has libcurl look and set the
        next one, which is cheaper than a new timer for every call added."""
        loop, timer = self._loop, self._timer
        if ms < 0 or loop is None or loop.is_closed():
            return
        when = loop.time() + ms / 1000
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timer = loop.call_at(when, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self._act(pycurl.SOCKET_TIMEOUT, 0)

    def _act(self, fd: int, event: int) -> None:
        """Let libcurl act on ``fd`` (or on its timeouts), then settle the finished calls."""
        if self._action(fd, event):
            self._settle_finished()

    def _action(self, fd: int, event: int) -> bool:
        """libcurl's work on ``fd``; False when libcurl itself failed (out of memory, an
        internal error): then every call in flight fails now, not at its deadline."""
        try:
            self._multi.socket_action(fd, event)
        except pycurl.error as exc:
            self._fail_all(f"libcurl failed: {exc.args[-1]}")
            return False
        return True

    def _settle_finished(self) -> None:
        while True:
            queued, done, failed = self._multi.info_read()
            for curl in done:
                self._settle(curl, None, "")
            for curl, code, message in failed:
                self._settle(curl, code, message)
            if not queued:
                return

    def _settle(self, curl: pycurl.Curl, code: int | None, message: str) -> None:
        call = self._busy[curl]
        status = int(curl.getinfo(pycurl.RESPONSE_CODE))
        failure = None if code is None else self._failure(curl, call, code, message)
        self._release(curl)
        if call.future.done():
            return
        if failure is None:
            call.future.set_result(Answer(status, Headers(call.lines), b"".join(call.body)))
        else:
            call.future.set_exception(failure)

    def _failure(self, curl: pycurl.Curl, call: _Call, code: int, message: str) -> CallFailed:
        if code == pycurl.E_FILESIZE_EXCEEDED:
            declared = parse_headers(call.lines).get("content-length", "")
            return TooLarge(f"{declared} bytes" if declared.isdigit()
                            else f"more than {call.max_bytes} bytes")
        if code == pycurl.E_WRITE_ERROR and call.size > call.max_bytes:
            return TooLarge(f"more than {call.max_bytes} bytes")
        if code == pycurl.E_COULDNT_CONNECT:
            errno = int(curl.getinfo(pycurl.OS_ERRNO))
            why = os.strerror(errno) if errno else message
            return CallFailed(f"cannot connect to {self._target}: {why}")
        if code == pycurl.E_PEER_FAILED_VERIFICATION:
            return CallFailed(f"certificate verify failed: {message}")
        if code == pycurl.E_OPERATION_TIMEDOUT:
            return TimedOut(f"no answer within {call.timeout_s:.3g}s")
        return CallFailed(message)

    def _fail_all(self, reason: str) -> None:
        for curl, call in list(self._busy.items()):
            if not call.future.done():
                call.future.set_exception(CallFailed(reason))  # one each: raised in each task
            self._release(curl)

    async def close(self) -> None:
        self._fail_all("the client was closed")
        self._multi.close()
        for curl in self._idle:
            curl.close()
        self._idle.clear()
        if self._selecting and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sockets.fileno())
        self._selecting = False
        self._sockets.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def host_port(url: str) -> str:
    """``url``'s host and port, the scheme's default port when it names none."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return f"{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def trust_store() -> tuple[tuple[int, str], ...]:
    """The CAs an endpoint's and a proxy's certificates are verified against, as libcurl's
    options and their values: ``SSL_CERT_FILE``, else ``SSL_CERT_DIR``, else certifi's
    bundle."""
    if path := os.environ.get("SSL_CERT_FILE"):
        return (pycurl.CAINFO, path), (pycurl.PROXY_CAINFO, path)
    if path := os.environ.get("SSL_CERT_DIR"):
        return (pycurl.CAPATH, path), (pycurl.PROXY_CAPATH, path)
    return (pycurl.CAINFO, certifi.where()), (pycurl.PROXY_CAINFO, certifi.where())


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url``, or None (none, or NO_PROXY covers it)."""
    parts = urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def retry_after_s(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: whole seconds, or an HTTP date (none before
    now); None when absent or neither."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]{1,12}", value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
