"""Signed requests to remote handlers: HMAC-SHA256 over a timestamp and the body.

The dispatcher sends ``Orchestrator-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>]`` with one
``v1`` per active secret, each ``HMAC-SHA256(secret, "<t>." + body)`` in hex. A receiver accepts
a request when some ``v1`` matches one of its own secrets and ``t`` is recent (an old request
replayed is refused). Either side may hold two secrets at once, so a secret is rotated without
downtime: add the new one where requests are verified, then sign with it, then retire the old.

Functions verify with ``verify`` or ``verify_headers``; only the standard library is used.
``verify_headers`` takes the headers as any framework has them: a mapping (Starlette, Flask,
Django, Azure Functions, a Lambda event's ``headers``), a WSGI ``environ``, or the
``(name, value)`` byte pairs of an ASGI ``scope["headers"]``.
"""

from __future__ import annotations

import hmac
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from orchestrator.errors import ConfigError, SignatureError

HEADER = "Orchestrator-Signature"
SCHEME = "v1"
TOLERANCE_S = 300.0
SECRETS_ENV = "ORCHESTRATOR_REMOTE_SECRETS"
# The header's names as frameworks hand them over, lowercased: HTTP, and WSGI's environ key.
_NAMES = (HEADER.lower(), "http_" + HEADER.lower().replace("-", "_"))

Headers = Mapping[str, Any] | Iterable[tuple[str | bytes, str | bytes]]
"""Request headers as a framework gives them: a mapping of names to values (any case), a WSGI
``environ``, or ASGI's list of ``(name, value)`` byte pairs."""
# Unix seconds: ASCII digits only (str.isdigit takes "²"), few enough for a float.
_TIMESTAMP = re.compile(r"[0-9]{1,15}")


def digest(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret``."""
    return hmac.digest(secret.encode(), f"{timestamp}.".encode() + body, "sha256").hex()


def sign(body: bytes, secrets: Sequence[str], *, now: float | None = None) -> str:
    """The signature header's value for ``body``: one ``v1`` per secret (newest first).
    Raises ConfigError without a secret."""
    if not secrets:
        raise ConfigError(f"no signing secret: set {SECRETS_ENV}")
    timestamp = int(time.time() if now is None else now)
    return ",".join([f"t={timestamp}", *(f"{SCHEME}={digest(s, timestamp, body)}"
                                        for s in secrets)])


def verify(body: bytes, header: str | None, secrets: Sequence[str], *,
           now: float | None = None, tolerance_s: float = TOLERANCE_S) -> int:
    """Check a request: its signature header against ``body`` and any of ``secrets``; the
    signed timestamp. Raises SignatureError when the header is missing or malformed, the
    timestamp is further than ``tolerance_s`` from now, or no signature matches."""
    timestamp, signatures = _parse(header)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(f"signature timestamp is {current - timestamp:.0f}s off "
                             f"(more than {tolerance_s:g}s)")
    expected = [digest(secret, timestamp, body) for secret in secrets if secret]
    if not any(hmac.compare_digest(e, s) for e in expected for s in signatures):
        raise SignatureError("no signature matches")
    return timestamp


def verify_headers(body: bytes, headers: Headers, secrets: Sequence[str], *,
                   now: float | None = None, tolerance_s: float = TOLERANCE_S) -> int:
    """``verify`` with the signature header found in ``headers`` (see ``Headers``; names in
    any case). Raises SignatureError as ``verify`` does, a missing header included."""
    return verify(body, header_value(headers), secrets, now=now, tolerance_s=tolerance_s)


def header_value(headers: Headers) -> str | None:
    """The signature header's value in ``headers`` (the first, if repeated), or None."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if _text(name).lower() in _NAMES:
            return _text(value)
    return None


def _text(value: object) -> str:
    """A header name or value as text; bytes as HTTP sends them (ISO-8859-1)."""
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def secrets_from_env(name: str = SECRETS_ENV, env: Mapping[str, str] | None = None) -> list[str]:
    """The comma-separated secrets in environment variable ``name`` (newest first)."""
    raw = (os.environ if env is None else env).get(name, "")
    return [part.strip() for part in raw.split(",") if part.strip()]


def _parse(header: str | None) -> tuple[int, list[str]]:
    if not header:
        raise SignatureError(f"missing {HEADER} header")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and _TIMESTAMP.fullmatch(value):
            timestamp = int(value)
        elif key == SCHEME and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureError(f"malformed {HEADER} header")
    return timestamp, signatures
