"""webhooks: a URL per job and batch, each tenant's endpoint and signing secret, the
outbox of events and the record of every delivery attempt

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    for table in ("jobs", "batches"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("webhook_url", sa.Text(), nullable=True))
    op.create_table(
        "webhook_endpoints",
        sa.Column("tenant", sa.String(length=64), primary_key=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("secret", sa.String(length=100), nullable=False),
        _ts("created_at", False),
        _ts("updated_at", False),
    )
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("batch_id", sa.String(length=32), nullable=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("created_at", False),
        _ts("next_attempt_at", False),
        _ts("lease_until"),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        _ts("delivered_at"),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index("ix_webhook_events_job_id", "webhook_events", ["job_id"])
    op.create_index("ix_webhook_events_batch_id", "webhook_events", ["batch_id"])
    op.create_index(
        "ix_webhook_events_state_next", "webhook_events", ["state", "next_attempt_at"]
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column(
            "event_id",
            sa.String(length=40),
            sa.ForeignKey("webhook_events.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        _ts("at", False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
    )
    op.create_index("ix_webhook_deliveries_event_id", "webhook_deliveries", ["event_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_event_id", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    for name in ("ix_webhook_events_state_next", "ix_webhook_events_batch_id",
                 "ix_webhook_events_job_id"):
        op.drop_index(name, table_name="webhook_events")
    op.drop_table("webhook_events")
    op.drop_table("webhook_endpoints")
    for table in ("batches", "jobs"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("webhook_url")
