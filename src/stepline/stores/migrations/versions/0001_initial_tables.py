"""initial tables

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from stepline.stores.schema import JsonDocument, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batch_definition",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("cron", sa.String(length=200), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column("steps", JsonDocument, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_definition")),
        sa.UniqueConstraint("name", name=op.f("uq_batch_definition_name")),
    )
    op.create_table(
        "stepline_lease",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_stepline_lease")),
    )
    op.create_table(
        "stepline_worker",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stepline_worker")),
    )
    op.create_table(
        "batch_definition_version",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("definition_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("document", JsonDocument, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["definition_id"],
            ["batch_definition.id"],
            name=op.f("fk_batch_definition_version_definition_id_batch_definition"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_definition_version")),
        sa.UniqueConstraint(
            "definition_id",
            "version",
            name=op.f("uq_batch_definition_version_definition_id_version"),
        ),
    )
    op.create_table(
        "batch_instance",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("definition_id", sa.BigInteger(), nullable=False),
        sa.Column("definition_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("params", JsonDocument, nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("scheduled_for", UtcDateTime(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("owner_id", sa.String(length=200), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["definition_id"],
            ["batch_definition.id"],
            name=op.f("fk_batch_instance_definition_id_batch_definition"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_instance")),
        sa.UniqueConstraint(
            "definition_id",
            "idempotency_key",
            name=op.f("uq_batch_instance_definition_id_idempotency_key"),
        ),
        sa.UniqueConstraint(
            "definition_id",
            "scheduled_for",
            name=op.f("uq_batch_instance_definition_id_scheduled_for"),
        ),
    )
    with op.batch_alter_table("batch_instance", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_batch_instance_status"), ["status"], unique=False)

    op.create_table(
        "batch_step_result",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("batch_instance_id", sa.BigInteger(), nullable=False),
        sa.Column("step_key", sa.String(length=200), nullable=False),
        sa.Column("map_index", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("first_attempt", sa.Integer(), nullable=False),
        sa.Column("result_payload", JsonDocument, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("upstream_pending", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.String(length=200), nullable=True),
        sa.Column("available_at", UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_instance_id"],
            ["batch_instance.id"],
            name=op.f("fk_batch_step_result_batch_instance_id_batch_instance"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_step_result")),
        sa.UniqueConstraint(
            "batch_instance_id",
            "step_key",
            "map_index",
            name=op.f("uq_batch_step_result_batch_instance_id_step_key_map_index"),
        ),
    )
    with op.batch_alter_table("batch_step_result", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_batch_step_result_batch_instance_id_status"),
            ["batch_instance_id", "status"],
            unique=False,
        )

    op.create_table(
        "batch_step_attempt",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("step_result_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("owner_id", sa.String(length=200), nullable=True),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["step_result_id"],
            ["batch_step_result.id"],
            name=op.f("fk_batch_step_attempt_step_result_id_batch_step_result"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_step_attempt")),
        sa.UniqueConstraint(
            "step_result_id", "attempt", name=op.f("uq_batch_step_attempt_step_result_id_attempt")
        ),
    )


def downgrade() -> None:
    op.drop_table("batch_step_attempt")
    with op.batch_alter_table("batch_step_result", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batch_step_result_batch_instance_id_status"))

    op.drop_table("batch_step_result")
    with op.batch_alter_table("batch_instance", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batch_instance_status"))

    op.drop_table("batch_instance")
    op.drop_table("batch_definition_version")
    op.drop_table("stepline_worker")
    op.drop_table("stepline_lease")
    op.drop_table("batch_definition")
