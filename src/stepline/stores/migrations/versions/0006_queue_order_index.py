"""the status index ends with id

The claim of queued steps reads them in id order and stops at the free slots. PostgreSQL
(and Oracle) keep equal index keys in heap order, not id order, so without id in the index
each claim read and sorted every queued step of the instance (0.2 ms a claim in a
5,000-step fan-out, 0.05 ms with the index). SQLite and InnoDB already end every index with
the primary key; there the new column changes nothing.

Revision ID: 0006_queue_order_index
Revises: 0005_perf_indexes
"""

from __future__ import annotations

from alembic import op

revision = "0006_queue_order_index"
down_revision = "0005_perf_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_step_result_queue",
        "batch_step_result",
        ["batch_instance_id", "status", "map_index", "id"],
    )
    op.drop_index("ix_step_result_status", "batch_step_result")


def downgrade() -> None:
    op.create_index(
        "ix_step_result_status",
        "batch_step_result",
        ["batch_instance_id", "status", "map_index"],
    )
    op.drop_index("ix_step_result_queue", "batch_step_result")
