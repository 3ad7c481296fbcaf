"""The HTTP client of remote handlers: each call bounded in time and in size.

Calls run on an asyncio loop (``asyncloop``) over aiohttp, so a call waiting on the network
holds no thread. A call has one deadline: connecting, the TLS handshake, sending, and every
read of the headers and of the body all happen inside one ``asyncio.timeout``, so an endpoint
that sends its answer a byte at a time fails the call on time. The body is read up to a
maximum size. Redirects are not followed. Certificates are verified against the trust
store httpx uses (certifi's, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``).
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp
import httpx

READ_CHUNK = 65536


class CallFailed(Exception):
    """The call did not bring back an answer (refused, reset, unreadable)."""


class TimedOut(CallFailed):
    """The call's deadline passed before the whole answer was read."""


class TooLarge(CallFailed):
    """The answer was longer than the call allowed."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What an endpoint answered: status, headers (case-insensitive) and the whole body."""

    status: int
    headers: Mapping[str, str]
    content: bytes


class Client:
    """Kept-alive connections to one endpoint, at most ``max_connections`` of them.
    ``proxy``: an HTTP(S) proxy's URL; by default the one the environment names for ``url``
    (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``). Created and used on one event loop."""

    def __init__(self, url: str, *, max_connections: int, headers: Mapping[str, str],
                 proxy: str | None = None) -> None:
        self._proxy = proxy or environment_proxy(url)
        # The trust store httpx uses: certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR when set.
        # Reading it takes tens of milliseconds on the loop: only where TLS may be spoken.
        tls = any(u and urlsplit(u).scheme == "https" for u in (url, self._proxy))
        connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections,
                                         ssl=httpx.create_ssl_context() if tls else True)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=dict(headers), cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None), skip_auto_headers=("User-Agent",))

    async def post(self, url: str, *, content: bytes, headers: Mapping[str, str],
                   timeout_s: float, max_bytes: int) -> Answer:
        """POST ``content`` and read the answer, all within ``timeout_s`` seconds from now.
        Raises TimedOut when the time runs out, TooLarge when the body exceeds ``max_bytes``,
        CallFailed when the call fails otherwise."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self._post(url, content, headers, max_bytes)
        except TimeoutError:
            raise TimedOut(f"no answer within {timeout_s:.3g}s") from None
        except aiohttp.ClientConnectorError as exc:
            why = ("Connection refused" if isinstance(exc.os_error, ConnectionRefusedError)
                   else exc.os_error.strerror or type(exc.os_error).__name__)
            raise CallFailed(f"cannot connect to {exc.host}:{exc.port}: {why}") from None
        except aiohttp.ClientError as exc:
            raise CallFailed(str(exc) or type(exc).__name__) from None

    async def _post(self, url: str, content: bytes, headers: Mapping[str, str],
                    max_bytes: int) -> Answer:
        async with self._session.post(url, data=content, headers=dict(headers),
                                      allow_redirects=False, proxy=self._proxy) as response:
            declared = response.headers.get("content-length", "")
            if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
                raise TooLarge(f"{declared} bytes")
            body = bytearray()
            async for chunk in response.content.iter_chunked(READ_CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    raise TooLarge(f"more than {max_bytes} bytes")
            return Answer(response.status, response.headers, bytes(body))

    async def close(self) -> None:
        await self._session.close()


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
