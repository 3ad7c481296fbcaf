"""The helpdesk application's test setup, as an application using orchestrator.testing writes
it: its workflows, and its own tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import Registry, load_registry

# Not what an application writes: an installed orchestrator registers its pytest plugin (and
# these fixtures) through an entry point. Our own suite takes the fixtures from the module, so
# that they serve this folder only, with or without that entry point.
from orchestrator.testing import (  # noqa: F401
    _orchestrator_templates,
    orchestrator_db,
    orchestrator_harness,
    orchestrator_server,
    orchestrator_settings,
)


@pytest.fixture
def orchestrator_schema() -> Path:
    return Path(__file__).with_name("helpdesk.sql")


@pytest.fixture
def orchestrator_registry() -> Registry:
    return load_registry("tests.plugin.helpdesk")
