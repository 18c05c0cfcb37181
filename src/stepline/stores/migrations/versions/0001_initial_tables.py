"""initial tables

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from stepline.stores.schema import JsonDocument, UtcDateTime, oracle_native_json

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _oracle() -> bool:
    return op.get_context().dialect.name == "oracle"


def _json_checks(*columns: str, table: str) -> list[sa.CheckConstraint]:
    """``CHECK (c IS JSON)`` on Oracle before 21c, where JSON columns are CLOBs."""
    dialect = op.get_context().dialect
    if dialect.name != "oracle" or oracle_native_json(dialect):
        return []
    return [sa.CheckConstraint(f"{c} IS JSON", name=op.f(f"ck_{table}_{c}_json")) for c in columns]


def _unique_unless_null(table: str, key: str, column: str) -> list[sa.UniqueConstraint]:
    """A composite unique constraint, except on Oracle (see _oracle_unique_indexes)."""
    if _oracle():
        return []
    return [sa.UniqueConstraint(key, column, name=op.f(f"uq_{table}_{key}_{column}"))]


def _oracle_unique_indexes(table: str, key: str, *columns: str) -> None:
    # Oracle's composite unique constraint treats (key, NULL) rows as equal; a
    # function-based index leaves rows with a NULL column out of the index entirely.
    if not _oracle():
        return
    for column in columns:
        when = f"CASE WHEN {column} IS NOT NULL THEN"
        op.create_index(
            op.f(f"uq_{table}_{key}_{column}"),
            table,
            [sa.text(f"{when} {key} ELSE NULL END"), sa.text(f"{when} {column} ELSE NULL END")],
            unique=True,
        )


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
        *_json_checks("steps", table="batch_definition"),
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
        *_json_checks("document", table="batch_definition_version"),
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
        *_unique_unless_null("batch_instance", "definition_id", "idempotency_key"),
        *_unique_unless_null("batch_instance", "definition_id", "scheduled_for"),
        *_json_checks("params", table="batch_instance"),
    )
    _oracle_unique_indexes("batch_instance", "definition_id", "scheduled_for", "idempotency_key")
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
        *_json_checks("result_payload", table="batch_step_result"),
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
        if _oracle():
            batch_op.drop_index(batch_op.f("uq_batch_instance_definition_id_scheduled_for"))
            batch_op.drop_index(batch_op.f("uq_batch_instance_definition_id_idempotency_key"))

    op.drop_table("batch_instance")
    op.drop_table("batch_definition_version")
    op.drop_table("stepline_worker")
    op.drop_table("stepline_lease")
    op.drop_table("batch_definition")
