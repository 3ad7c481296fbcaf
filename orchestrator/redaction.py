"""Passwords out of text: DSNs in messages and log lines are shown with ``***``."""

from __future__ import annotations

import re

# A URI's password runs from the user's ":" to the last "@" before the next blank: a password
# written with a raw "@" or "/" in it is hidden whole (libpq would cut it at the first "@" and
# report the rest as part of the host name).
_PASSWORD_IN_URI = re.compile(r"(://[^:/@\s]*:)\S*@")
_PASSWORD_PARAM = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with any password in a DSN (URI or key=value form) replaced by ``***``."""
    text = _PASSWORD_IN_URI.sub(r"\1***@", text)
    return _PASSWORD_PARAM.sub(r"\1***", text)
