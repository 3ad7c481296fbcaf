"""Alembic environment and revisions: the orchestrator schema and the demo's tables."""
