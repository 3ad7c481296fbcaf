"""The shop's test setup (see shop.sql): the fixtures of orchestrator.testing, a fresh database
per test with the shop's tables and, by default, its column-route workflows installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import Registry, load_registry

# As in tests/plugin: the fixtures come from the module, so that they serve this folder only.
from orchestrator.testing import (  # noqa: F401
    _orchestrator_templates,
    orchestrator_db,
    orchestrator_harness,
    orchestrator_server,
    orchestrator_settings,
)

SCHEMA = Path(__file__).with_name("shop.sql")


@pytest.fixture
def orchestrator_schema() -> Path:
    return SCHEMA


@pytest.fixture
def orchestrator_registry() -> Registry:
    return load_registry("tests.integration.lifecycle.shop_columns")
