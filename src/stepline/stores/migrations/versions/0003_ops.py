"""operations: pause/delete columns, fire times kept across purges, per-attempt step logs

Revision ID: 0003_ops
Revises: 0002_alert_outbox
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from stepline.stores.schema import LogText, UtcDateTime

revision = "0003_ops"
down_revision = "0002_alert_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batch_definition", schema=None) as batch_op:
        batch_op.add_column(sa.Column("paused_at", UtcDateTime(), nullable=True))
        batch_op.add_column(sa.Column("deleted_at", UtcDateTime(), nullable=True))
    with op.batch_alter_table("batch_instance", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_batch_instance_finished_at"), ["finished_at"], unique=False
        )
    op.create_table(
        "batch_fire_time",
        sa.Column("definition_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("scheduled_for", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["definition_id"],
            ["batch_definition.id"],
            name=op.f("fk_batch_fire_time_definition_id_batch_definition"),
        ),
        sa.PrimaryKeyConstraint("definition_id", "scheduled_for", name=op.f("pk_batch_fire_time")),
    )
    # Fire times that already have an instance keep it unique from now on.
    op.execute(
        "INSERT INTO batch_fire_time (definition_id, scheduled_for) "
        "SELECT definition_id, scheduled_for FROM batch_instance WHERE scheduled_for IS NOT NULL"
    )
    op.create_table(
        "batch_step_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("step_result_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("text", LogText, nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["step_result_id"],
            ["batch_step_result.id"],
            name=op.f("fk_batch_step_log_step_result_id_batch_step_result"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_step_log")),
        sa.UniqueConstraint(
            "step_result_id", "attempt", name=op.f("uq_batch_step_log_step_result_id_attempt")
        ),
    )


def downgrade() -> None:
    op.drop_table("batch_step_log")
    op.drop_table("batch_fire_time")
    with op.batch_alter_table("batch_instance", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batch_instance_finished_at"))
    with op.batch_alter_table("batch_definition", schema=None) as batch_op:
        batch_op.drop_column("deleted_at")
        batch_op.drop_column("paused_at")
