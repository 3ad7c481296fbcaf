"""Fleet-wide limits: the most runs of a handler at once, and per second, across dispatchers.

- ``orchestrator.limits`` holds one row per named limit (``orchestrator migrate`` writes them
  from the handlers' declarations): ``max_running`` (NULL: no bound on runs at once),
  ``per_s`` (NULL: no rate) and a token bucket for the rate (``tokens``, ``refilled_at``, at
  most ``burst``), and ``waits``, how many times an event was put back to wait its turn.
- ``orchestrator.limit_slots`` holds ``max_running`` numbered slots per limit. A dispatcher
  takes a slot for an event it claimed by writing the event's id into a free slot; a slot is
  free when it holds no event or an event that is no longer running (finished, retried,
  released or requeued), so a slot is never leaked by a dispatcher that died: nothing has to
  give it back. Slots are taken ``FOR UPDATE SKIP LOCKED``, so two dispatchers never take
  the same one.
- ``orchestrator_dispatcher`` may read both and update the slots' event and the bucket.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE orchestrator.limits (
    name         text             PRIMARY KEY,
    max_running  integer          CHECK (max_running > 0),
    per_s        double precision CHECK (per_s > 0),
    burst        double precision NOT NULL DEFAULT 1 CHECK (burst >= 1),
    tokens       double precision NOT NULL DEFAULT 1,
    refilled_at  timestamptz      NOT NULL DEFAULT now(),
    waits        bigint           NOT NULL DEFAULT 0,
    updated_at   timestamptz      NOT NULL DEFAULT now()
);

CREATE TABLE orchestrator.limit_slots (
    name      text    NOT NULL REFERENCES orchestrator.limits ON DELETE CASCADE,
    slot      integer NOT NULL,
    event_id  bigint,
    PRIMARY KEY (name, slot)
);

GRANT SELECT ON orchestrator.limits, orchestrator.limit_slots TO orchestrator_dispatcher;
GRANT UPDATE (tokens, refilled_at, waits) ON orchestrator.limits TO orchestrator_dispatcher;
GRANT UPDATE (event_id) ON orchestrator.limit_slots TO orchestrator_dispatcher;
GRANT SELECT ON orchestrator.limits, orchestrator.limit_slots
    TO orchestrator_admin, orchestrator_reader;
"""

DOWNGRADE = r"""
DROP TABLE orchestrator.limit_slots;
DROP TABLE orchestrator.limits;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
