"""audit trail of operator actions

Revision ID: 0004_audit
Revises: 0003_ops
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from stepline.stores.schema import UtcDateTime

revision = "0004_audit"
down_revision = "0003_ops"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stepline_audit",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("batch", sa.String(length=200), nullable=True),
        sa.Column("instance_id", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stepline_audit")),
    )
    with op.batch_alter_table("stepline_audit", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_stepline_audit_instance_id"), ["instance_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("stepline_audit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stepline_audit_instance_id"))
    op.drop_table("stepline_audit")
