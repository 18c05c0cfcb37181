"""The store's reads and writes for operators: filtered instance listings and the audit trail.

Kept apart from :mod:`stepline.stores.sqlalchemy` (the engine's hot path); the methods of
:class:`SqlAlchemyStore` delegate here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from stepline.core.states import StepStatus
from stepline.stores.base import (
    AuditRecord,
    InstanceQuery,
    InstanceRecord,
    StepOverview,
    StepResultRecord,
)
from stepline.stores.schema import (
    batch_definition,
    batch_instance,
    batch_step_result,
    stepline_audit,
)

if TYPE_CHECKING:
    from stepline.stores.sqlalchemy import SqlAlchemyStore

__all__ = ["audit", "find_instances", "record_audit", "step_overview", "step_record"]

BI = batch_instance
R = batch_step_result
_FAILED = [StepStatus.FAILED.value, StepStatus.UPSTREAM_FAILED.value, StepStatus.CANCELLED.value]
A = stepline_audit
DETAIL_LIMIT = 4000


def find_instances(
    store: SqlAlchemyStore, query: InstanceQuery, limit: int
) -> list[InstanceRecord]:
    select = sa.select(BI).order_by(BI.c.id.desc()).limit(limit)
    if query.batch is not None:
        select = select.join(batch_definition, batch_definition.c.id == BI.c.definition_id).where(
            batch_definition.c.name == query.batch
        )
    if query.status is not None:
        select = select.where(BI.c.status == query.status.value)
    if query.trigger is not None:
        select = select.where(BI.c.trigger == query.trigger)
    if query.created_from is not None:
        select = select.where(BI.c.created_at >= query.created_from)
    if query.created_to is not None:
        select = select.where(BI.c.created_at < query.created_to)
    if query.before_id is not None:
        select = select.where(BI.c.id < query.before_id)
    with store._read() as conn:
        return [store._instance(conn, r) for r in conn.execute(select).all()]


def record_audit(
    store: SqlAlchemyStore,
    actor: str,
    action: str,
    *,
    batch: str | None,
    instance_id: int | None,
    detail: str | None,
) -> AuditRecord:
    values = {
        "at": datetime.now(UTC),
        "actor": actor[:200],
        "action": action[:32],
        "batch": batch,
        "instance_id": instance_id,
        "detail": None if detail is None else detail[:DETAIL_LIMIT],
    }
    with store._write() as conn:
        key = conn.execute(sa.insert(A).values(values)).inserted_primary_key
        assert key is not None
        new_id = int(key[0])
    return AuditRecord(id=new_id, **values)  # type: ignore[arg-type]


def audit(
    store: SqlAlchemyStore, *, instance_id: int | None, batch: str | None, limit: int
) -> list[AuditRecord]:
    select = sa.select(A).order_by(A.c.id.desc()).limit(limit)
    if instance_id is not None:
        select = select.where(A.c.instance_id == instance_id)
    if batch is not None:
        select = select.where(A.c.batch == batch)
    with store._read() as conn:
        return [
            AuditRecord(r.id, r.at, r.actor, r.action, r.batch, r.instance_id, r.detail)
            for r in conn.execute(select).all()
        ]


def step_record(r: sa.Row[Any]) -> StepResultRecord:
    """A ``batch_step_result`` row as a record."""
    return StepResultRecord(
        r.id,
        r.batch_instance_id,
        r.step_key,
        r.map_index,
        StepStatus(r.status),
        r.attempt,
        r.result_payload,
        r.error,
        r.started_at,
        r.finished_at,
        r.created_at,
    )


def step_overview(
    store: SqlAlchemyStore, instance_id: int, first_items: int, failed_items: int
) -> StepOverview:
    of_instance = R.c.batch_instance_id == instance_id
    with store._read() as conn:
        shown = [
            step_record(r)
            for r in conn.execute(
                sa.select(R).where(of_instance, R.c.map_index < first_items).order_by(R.c.id)
            )
        ]
        shown += [
            step_record(r)
            for r in conn.execute(
                sa.select(R)
                .where(of_instance, R.c.map_index >= first_items, R.c.status.in_(_FAILED))
                .order_by(R.c.step_key, R.c.map_index)
                .limit(failed_items)
            )
        ]
        counts: dict[str, dict[StepStatus, int]] = {}
        for key, status, n in conn.execute(
            sa.select(R.c.step_key, R.c.status, sa.func.count())
            .where(of_instance, R.c.map_index >= 0)
            .group_by(R.c.step_key, R.c.status)
        ):
            counts.setdefault(key, {})[StepStatus(status)] = int(n)
    return StepOverview(shown, counts)
