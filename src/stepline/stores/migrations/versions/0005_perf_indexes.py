"""indexes for the hot path

The claim of a mapped step's next items seeks (instance, step, 'queued') and reads them in
map_index order, instead of walking every finished item from index 0 (quadratic in the
number of items). The status index gains map_index, so the claim of queued unmapped steps
(map_index -1) skips the items of a wide map.

Revision ID: 0005_perf_indexes
Revises: 0004_audit
"""

from __future__ import annotations

from alembic import op

revision = "0005_perf_indexes"
down_revision = "0004_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # New indexes first: MariaDB needs one on the foreign key column at every moment.
    op.create_index(
        "ix_step_result_items",
        "batch_step_result",
        ["batch_instance_id", "step_key", "status", "map_index"],
    )
    op.create_index(
        "ix_step_result_status",
        "batch_step_result",
        ["batch_instance_id", "status", "map_index"],
    )
    op.drop_index("ix_batch_step_result_batch_instance_id_status", "batch_step_result")


def downgrade() -> None:
    op.create_index(
        "ix_batch_step_result_batch_instance_id_status",
        "batch_step_result",
        ["batch_instance_id", "status"],
    )
    op.drop_index("ix_step_result_status", "batch_step_result")
    op.drop_index("ix_step_result_items", "batch_step_result")
