"""results keep what structured outputs, log-probabilities, label scores and
post-processing add

raw_output / raw_outputs: the generation before post-processing; parsed: the output
parsed as JSON; incomplete: a constrained output cut before its grammar completed;
logprobs: per output, OpenAI-shaped token log-probabilities; choice_scores: every
label's log-probability.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_JSON = ("raw_outputs", "parsed", "logprobs", "choice_scores")


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("raw_output", sa.Text(), nullable=True))
        for name in _JSON:
            batch.add_column(sa.Column(name, sa.JSON(none_as_null=True), nullable=True))
        batch.add_column(sa.Column("incomplete", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("incomplete")
        for name in reversed(_JSON):
            batch.drop_column(name)
        batch.drop_column("raw_output")
