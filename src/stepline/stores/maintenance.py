"""The operations side of SqlAlchemyStore: pause, delete, fire times, step logs, purge.

A mixin, so the per-step code in ``sqlalchemy.py`` and ``transaction.py`` stays apart from
what operators run now and then.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from stepline.core.states import InstanceStatus
from stepline.errors import Conflict, NotFound
from stepline.stores.base import PurgeFilter, StepLogRecord, StoredDefinition, iter_chunks
from stepline.stores.schema import (
    batch_definition,
    batch_definition_version,
    batch_fire_time,
    batch_instance,
    batch_step_attempt,
    batch_step_log,
    batch_step_result,
    stepline_alert_outbox,
)
from stepline.stores.transaction import CHUNK, utcnow

D = batch_definition
BI = batch_instance
R = batch_step_result
ACTIVE = (InstanceStatus.QUEUED.value, InstanceStatus.RUNNING.value)


class SqlMaintenance:
    dialect: str

    def _write(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def definition(self, name: str, version: int | None = None) -> StoredDefinition:
        raise NotImplementedError

    def _forget(self, definition_id: int) -> None:
        raise NotImplementedError

    def set_paused(self, name: str, paused: bool) -> StoredDefinition:
        with self._write() as conn:
            row = _live_definition(conn, name)
            if (row.paused_at is not None) != paused:
                conn.execute(
                    sa.update(D)
                    .where(D.c.id == row.id)
                    .values(paused_at=utcnow() if paused else None)
                )
        return self.definition(name)

    def delete_definition(self, name: str, *, purge: bool) -> int:
        with self._write() as conn:
            row = _live_definition(conn, name) if not purge else _any_definition(conn, name)
            active = conn.execute(
                sa.select(sa.func.count())
                .select_from(BI)
                .where(BI.c.definition_id == row.id, BI.c.status.in_(ACTIVE))
            ).scalar_one()
            if active:
                raise Conflict(
                    f"batch {name!r} has {active} queued or running instance(s); "
                    "cancel them or wait for them to finish, then delete it"
                )
            if not purge:
                conn.execute(
                    sa.update(D).where(D.c.id == row.id).values(deleted_at=utcnow(), paused_at=None)
                )
                return 0
            ids = list(
                conn.execute(sa.select(BI.c.id).where(BI.c.definition_id == row.id)).scalars()
            )
            for chunk in iter_chunks(ids, CHUNK):
                _delete_instances(conn, list(chunk))
            conn.execute(
                sa.delete(batch_fire_time).where(batch_fire_time.c.definition_id == row.id)
            )
            conn.execute(
                sa.delete(batch_definition_version).where(
                    batch_definition_version.c.definition_id == row.id
                )
            )
            conn.execute(sa.delete(D).where(D.c.id == row.id))
        self._forget(row.id)
        return len(ids)

    def fire_times_taken(
        self, definition_id: int, times: Sequence[datetime]
    ) -> dict[datetime, int | None]:
        found: dict[datetime, int | None] = {}
        f = batch_fire_time
        with self._read() as conn:
            for chunk in iter_chunks(list(times), CHUNK):
                query = (
                    sa.select(f.c.scheduled_for, BI.c.id)
                    .select_from(
                        f.outerjoin(
                            BI,
                            (BI.c.definition_id == f.c.definition_id)
                            & (BI.c.scheduled_for == f.c.scheduled_for),
                        )
                    )
                    .where(f.c.definition_id == definition_id, f.c.scheduled_for.in_(list(chunk)))
                )
                for when, instance_id in conn.execute(query):
                    found[_aware(when)] = instance_id
        return found

    def step_logs(
        self, instance_id: int, step: str | None = None, *, after_id: int = 0
    ) -> list[StepLogRecord]:
        g = batch_step_log
        query = (
            sa.select(g.c.id, R.c.step_key, R.c.map_index, g.c.attempt, g.c.text, g.c.truncated)
            .add_columns(g.c.created_at)
            .join(R, R.c.id == g.c.step_result_id)
            .where(R.c.batch_instance_id == instance_id, g.c.id > after_id)
            .order_by(g.c.id)
        )
        if step is not None:
            query = query.where(R.c.step_key == step)
        with self._read() as conn:
            return [
                StepLogRecord(
                    r.id,
                    r.step_key,
                    r.map_index,
                    r.attempt,
                    r.text,
                    bool(r.truncated),
                    r.created_at,
                )
                for r in conn.execute(query)
            ]

    def purge_chunk(self, which: PurgeFilter, limit: int) -> int:
        with self._write() as conn:
            query = _purgeable(which).with_only_columns(BI.c.id).order_by(BI.c.id).limit(limit)
            if self.dialect != "sqlite":
                # A retry racing the purge waits here, then finds the instance gone.
                query = query.with_for_update()
            ids = list(conn.execute(query).scalars())
            if ids:
                _delete_instances(conn, ids)
            return len(ids)

    def count_purgeable(self, which: PurgeFilter) -> int:
        with self._read() as conn:
            query = _purgeable(which).with_only_columns(sa.func.count())
            return int(conn.execute(query).scalar_one())


def _purgeable(which: PurgeFilter) -> sa.Select[Any]:
    statuses = [s.value for s in which.statuses if s.is_final]
    query = sa.select(BI.c.id).where(
        BI.c.status.in_(statuses), BI.c.finished_at.is_not(None), BI.c.finished_at < which.before
    )
    if which.batch is not None:
        names = sa.select(D.c.id).where(D.c.name == which.batch).scalar_subquery()
        query = query.where(BI.c.definition_id == names)
    return query


def _delete_instances(conn: Connection, ids: list[int]) -> None:
    """Delete instances and everything that hangs off them (children first)."""
    rows = sa.select(R.c.id).where(R.c.batch_instance_id.in_(ids))
    conn.execute(sa.delete(batch_step_log).where(batch_step_log.c.step_result_id.in_(rows)))
    conn.execute(sa.delete(batch_step_attempt).where(batch_step_attempt.c.step_result_id.in_(rows)))
    conn.execute(sa.delete(R).where(R.c.batch_instance_id.in_(ids)))
    outbox = stepline_alert_outbox
    conn.execute(sa.delete(outbox).where(outbox.c.batch_instance_id.in_(ids)))
    conn.execute(sa.delete(BI).where(BI.c.id.in_(ids)))


def _live_definition(conn: Connection, name: str) -> Row[Any]:
    row = conn.execute(
        sa.select(D).where(D.c.name == name, D.c.deleted_at.is_(None)).with_for_update()
    ).first()
    if row is None:
        raise NotFound(f"batch {name!r} does not exist")
    return row


def _any_definition(conn: Connection, name: str) -> Row[Any]:
    row = conn.execute(sa.select(D).where(D.c.name == name).with_for_update()).first()
    if row is None:
        raise NotFound(f"batch {name!r} does not exist")
    return row


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
