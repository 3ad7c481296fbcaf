"""HTTP for tests that talk to a server of the orchestrator's (which binds its own port)."""

from __future__ import annotations

import urllib.error
import urllib.request


def get(url: str, timeout_s: float = 10) -> str | None:
    """The body of ``url``, or None when nothing answers there (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body: bytes = response.read()
            return body.decode()
    except (urllib.error.URLError, ConnectionError):
        return None
