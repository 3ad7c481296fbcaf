"""Alembic environment and revisions of the orchestrator's own schema (installed as
``orchestrator.migrations``). They create and change nothing outside the ``orchestrator`` schema,
where Alembic's version table lives too (``orchestrator.alembic_version``)."""

# Where Alembic keeps the revision this database is at: beside the tables it describes, so that
# an application's own Alembic history (public.alembic_version by default) never meets ours.
VERSION_SCHEMA = "orchestrator"
VERSION_TABLE = "alembic_version"
