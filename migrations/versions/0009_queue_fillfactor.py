"""The queue's pages keep room for its events' next versions: fillfactor 50 on
``orchestrator.events``.

An event is inserted once and updated twice (claimed, finished), never as a HOT update
(``status`` is in the partial indexes' predicates). On a full page each update goes to another
page and is logged with the whole new version, the event's ``old_row`` and ``new_row`` included
(about 530 bytes), after a lock record. With half of each page left free at insert, the new
version lands on the same page, where PostgreSQL logs only the bytes that changed (status,
lease, times: about 190 bytes) and page pruning frees the space of dead versions without a
vacuum. Measured with pg_walinspect on 60,000 transitions of the bench (`--long-run`), the
bench database's records only: the queue's heap records went from about 1,840 to 1,060 bytes
per transition, all of them from 2,740 to 1,960. Only pages written from now on are affected.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE orchestrator.events SET (fillfactor = 50);")


def downgrade() -> None:
    op.execute("ALTER TABLE orchestrator.events RESET (fillfactor);")
