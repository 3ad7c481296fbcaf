"""The `orchestrator` command: thin typer commands over Orchestrator and the operator verbs."""

from orchestrator.cli import bench, dashboard, demo, engine, operate
from orchestrator.cli.common import app

__all__ = ["app", "bench", "dashboard", "demo", "engine", "main", "operate"]


def main() -> None:
    app()
