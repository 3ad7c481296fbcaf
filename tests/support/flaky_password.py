"""A password provider for ``--password-provider tests.support.flaky_password:token`` that
fails now and then, as a token service under load does: every third call raises (the first
never does, so the dispatcher starts). The password is ``FLAKY_PASSWORD``'s value."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Mapping
from typing import Any

_calls = itertools.count(1)
_lock = threading.Lock()


class TokenServiceBusy(Exception):
    pass


def token(params: Mapping[str, Any]) -> str:
    with _lock:
        call = next(_calls)
    if call % 3 == 0:
        raise TokenServiceBusy(f"token service busy (call {call})")
    return os.environ["FLAKY_PASSWORD"]
