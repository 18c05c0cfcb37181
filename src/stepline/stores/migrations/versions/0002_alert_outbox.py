"""alert outbox: alerts of failed instances survive the death of the process

Revision ID: 0002_alert_outbox
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from stepline.stores.schema import UtcDateTime

revision = "0002_alert_outbox"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stepline_alert_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("batch_instance_id", sa.BigInteger(), nullable=False),
        sa.Column("alert_index", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("available_at", UtcDateTime(), nullable=False),
        sa.Column("claimed_by", sa.String(length=200), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("sent_at", UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_instance_id"],
            ["batch_instance.id"],
            name=op.f("fk_stepline_alert_outbox_batch_instance_id_batch_instance"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stepline_alert_outbox")),
    )
    with op.batch_alter_table("stepline_alert_outbox", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_stepline_alert_outbox_status_available_at"),
            ["status", "available_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("stepline_alert_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stepline_alert_outbox_status_available_at"))
    op.drop_table("stepline_alert_outbox")
