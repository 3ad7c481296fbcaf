"""A least-privilege role for dispatchers: it may run and record handlers, never change the
schema.

``orchestrator_dispatcher`` is a group role (NOLOGIN) shared by every database of the server;
this revision creates it when missing (which needs CREATEROLE) and grants it, in this database,
what dispatching needs: read the workflow definitions, claim and finish events, record errors.
Nothing outside the orchestrator schema: an application grants its own tables (builds before
0.1.0 granted the demo's here; the demo now does it itself). No CREATE, ALTER, DROP or TRUNCATE.
Dispatchers log in as a role of their own that is a member:
``CREATE ROLE app_dispatcher LOGIN IN ROLE orchestrator_dispatcher``. A role that writes a
workflow's table needs INSERT on orchestrator.events too: the capture trigger runs as the writer.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orchestrator_dispatcher') THEN
        CREATE ROLE orchestrator_dispatcher NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database's migration created it at the same moment
END
$$;

GRANT USAGE ON SCHEMA orchestrator TO orchestrator_dispatcher;
-- Claim, finish, retry, release and requeue update events; write-backs insert the next event
-- through the capture trigger, which runs with the writer's privileges.
GRANT SELECT, INSERT, UPDATE ON orchestrator.events TO orchestrator_dispatcher;
GRANT SELECT, INSERT ON orchestrator.event_errors TO orchestrator_dispatcher;
-- The guard trigger and the definition check read these; the capture trigger reads the
-- deadlines when a row enters a state.
GRANT SELECT ON orchestrator.workflows, orchestrator.transitions, orchestrator.deadlines
    TO orchestrator_dispatcher;
"""

DOWNGRADE = r"""
REVOKE ALL ON ALL TABLES IN SCHEMA orchestrator FROM orchestrator_dispatcher;
REVOKE ALL ON SCHEMA orchestrator FROM orchestrator_dispatcher;

DO $$
BEGIN
    DROP ROLE orchestrator_dispatcher;
EXCEPTION WHEN dependent_objects_still_exist OR undefined_object THEN
    NULL;  -- still granted in another database of this server: it stays
END
$$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
