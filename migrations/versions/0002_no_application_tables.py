"""Nothing: the orchestrator creates no application tables.

Builds before 0.1.0 created the food-order demo's tables here; the demo now creates them itself
(``examples/food_order/schema.sql``), and the orchestrator's migrations change nothing outside
its own schema. The revision stays so that databases migrated by those builds keep one history;
their demo tables are left as they are.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
