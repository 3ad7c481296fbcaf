"""A password provider for tests (``--password-provider tests.support.tokens:from_env``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def from_env(params: Mapping[str, Any]) -> str:
    """The token in ORCHESTRATOR_TEST_TOKEN, as a cloud SDK would hand one out."""
    return os.environ["ORCHESTRATOR_TEST_TOKEN"]
