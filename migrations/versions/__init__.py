"""Alembic revisions of the orchestrator schema, frozen once released."""
