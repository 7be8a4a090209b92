"""result reuse: results keep a reproducibility key and where a copy came from; jobs
count the items they reused

results.reuse_key: a digest of model revision, engine, params (seed included) and
rendered prompt, indexed, so `--reuse` finds an identical succeeded item;
results.reused_from: the job a copied result came from; jobs.reused: how many of its
items were copied instead of generated.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("reuse_key", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("reused_from", sa.String(length=32), nullable=True))
        batch.create_index("ix_results_reuse_key", ["reuse_key"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("reused", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("reused")
    with op.batch_alter_table("results") as batch:
        batch.drop_index("ix_results_reuse_key")
        batch.drop_column("reused_from")
        batch.drop_column("reuse_key")
