"""items lose their attempts column; attempts get began_at; jobs get loaded_at

Item attempts are derived from the task lineage when a poison item is isolated, so a
claim no longer updates every item it hands out. An attempt records when its work began:
a worker claims its next task ahead, and that attempt counts only once work starts. A
job being submitted records when its last window was stored, so an abandoned submission
(its submitter died) can be told from a slow one.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.drop_column("attempts")
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("began_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("loaded_at")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("began_at")
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
