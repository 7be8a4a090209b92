"""the HTTP API: tenants on jobs and batches, API keys, uploaded files, offered
models, live workers; batches created through the API keep their OpenAI fields

Everything submitted before (or without an API key) belongs to the "default" tenant.
API keys are stored as SHA-256 hashes only. Uploaded files live on disk; their rows say
where. Workers write a heartbeat row, so the API can count the live workers per model.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _tenant() -> sa.Column:
    return sa.Column(
        "tenant", sa.String(length=64), nullable=False, server_default="default"
    )


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(_tenant())
        batch.create_index("ix_jobs_tenant_created", ["tenant", "created_at"])
    with op.batch_alter_table("batches") as batch:
        batch.add_column(_tenant())
        batch.add_column(sa.Column("endpoint", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("completion_window", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("input_file_id", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("phase", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("errors", sa.JSON(none_as_null=True), nullable=True))
        for name in ("in_progress_at", "failed_at", "cancelling_at"):
            batch.add_column(sa.Column(name, sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_batches_tenant_created", ["tenant", "created_at"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])
    op.create_table(
        "files",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("lines", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True, unique=True),
    )
    op.create_index("ix_files_tenant_created", "files", ["tenant", "created_at"])
    op.create_table(
        "offered_models",
        sa.Column("name", sa.String(length=200), primary_key=True),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("revision", sa.String(length=128), nullable=True),
        sa.Column("engine", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=200), primary_key=True),
        sa.Column("queue", sa.String(length=200), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("engine", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_workers_queue", "workers", ["queue"])


def downgrade() -> None:
    op.drop_index("ix_workers_queue", table_name="workers")
    op.drop_table("workers")
    op.drop_table("offered_models")
    op.drop_index("ix_files_tenant_created", table_name="files")
    op.drop_table("files")
    op.drop_index("ix_api_keys_tenant", table_name="api_keys")
    op.drop_table("api_keys")
    with op.batch_alter_table("batches") as batch:
        batch.drop_index("ix_batches_tenant_created")
        for name in (
            "cancelling_at",
            "failed_at",
            "in_progress_at",
            "errors",
            "phase",
            "input_file_id",
            "completion_window",
            "endpoint",
            "tenant",
        ):
            batch.drop_column(name)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_tenant_created")
        batch.drop_column("tenant")
