"""batches group the jobs of one input; items may hold a conversation; results keep
every output's finish reason

An input that names several models (OpenAI batch lines) becomes one job per model,
grouped as a batch. A chat item stores its messages (the worker renders them with the
model's chat template, or the job's own). A result with several outputs records why
each one ended.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("input_name", sa.Text(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True, unique=True),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("batch_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("chat_template", sa.Text(), nullable=True))
        batch.create_index("ix_jobs_batch_id", ["batch_id"])
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("messages", sa.JSON(none_as_null=True), nullable=True))
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("finish_reasons", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("finish_reasons")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("messages")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_batch_id")
        batch.drop_column("chat_template")
        batch.drop_column("batch_id")
    op.drop_table("batches")
