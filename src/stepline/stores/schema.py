"""The tables, declared once with SQLAlchemy Core; Alembic migrations must match them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, oracle, postgresql

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Encoded(str):
    """JSON text already serialised off the hot thread; stored as is."""

    __slots__ = ()


def json_serializer(value: Any) -> str:
    if isinstance(value, Encoded):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class _OracleJson(sa.TypeDecorator[Any]):
    """Oracle has no JSON type in SQLAlchemy 2.0: a CLOB holding JSON text."""

    impl = oracle.CLOB
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        return None if value is None else json_serializer(value)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        return None if value is None else json.loads(value)


JsonDocument = (
    sa.JSON().with_variant(postgresql.JSONB(), "postgresql").with_variant(_OracleJson(), "oracle")
)


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Naive UTC in the database (portable), aware UTC in Python."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _id() -> sa.Column[int]:
    return sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(), primary_key=True
    )


batch_definition = sa.Table(
    "batch_definition",
    metadata,
    _id(),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("cron", sa.String(200)),
    sa.Column("timezone", sa.String(64)),
    sa.Column("steps", JsonDocument, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

batch_definition_version = sa.Table(
    "batch_definition_version",
    metadata,
    _id(),
    sa.Column("definition_id", sa.BigInteger, sa.ForeignKey("batch_definition.id"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("document", JsonDocument, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("definition_id", "version"),
)

batch_instance = sa.Table(
    "batch_instance",
    metadata,
    _id(),
    sa.Column("definition_id", sa.BigInteger, sa.ForeignKey("batch_definition.id"), nullable=False),
    sa.Column("definition_version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("params", JsonDocument, nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("scheduled_for", UtcDateTime),
    sa.Column("idempotency_key", sa.String(200)),
    sa.Column("owner_id", sa.String(200)),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("started_at", UtcDateTime),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("error", sa.Text),
    # The database, not a leader lease, guarantees one instance per cron fire time.
    sa.UniqueConstraint("definition_id", "scheduled_for"),
    sa.UniqueConstraint("definition_id", "idempotency_key"),
    sa.Index(None, "status"),
)

batch_step_result = sa.Table(
    "batch_step_result",
    metadata,
    _id(),
    sa.Column(
        "batch_instance_id", sa.BigInteger, sa.ForeignKey("batch_instance.id"), nullable=False
    ),
    sa.Column("step_key", sa.String(200), nullable=False),
    # -1 for an unmapped step (as Airflow does); 0..n-1 for the items of a mapped step.
    sa.Column("map_index", sa.Integer, nullable=False, default=-1),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    # The attempt a retry of the instance began at: the step's retry budget counts from it,
    # while attempt numbers keep rising so that a stale report never matches.
    sa.Column("first_attempt", sa.Integer, nullable=False, default=1),
    sa.Column("result_payload", JsonDocument),
    sa.Column("error", sa.Text),
    sa.Column("started_at", UtcDateTime),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("created_at", UtcDateTime, nullable=False),
    # How many upstream steps are not final yet: lets a completion find the steps it
    # made ready without reading every predecessor (fan-in of 500 stays linear).
    sa.Column("upstream_pending", sa.Integer, nullable=False, default=0),
    sa.Column("owner_id", sa.String(200)),
    sa.Column("available_at", UtcDateTime),
    sa.UniqueConstraint("batch_instance_id", "step_key", "map_index"),
    # The claim of a mapped step's next items: a seek, then map_index order (not a walk
    # past every finished item). Migration 0003_perf_indexes.
    sa.Index("ix_step_result_items", "batch_instance_id", "step_key", "status", "map_index"),
    # Steps by status (unfinished, queued, running); map_index lets the claim of queued
    # unmapped steps skip a wide map's queued items.
    sa.Index("ix_step_result_status", "batch_instance_id", "status", "map_index"),
)

batch_step_attempt = sa.Table(
    "batch_step_attempt",
    metadata,
    _id(),
    sa.Column(
        "step_result_id", sa.BigInteger, sa.ForeignKey("batch_step_result.id"), nullable=False
    ),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("owner_id", sa.String(200)),
    sa.Column("started_at", UtcDateTime),
    sa.Column("finished_at", UtcDateTime),
    sa.UniqueConstraint("step_result_id", "attempt"),
)

stepline_worker = sa.Table(
    "stepline_worker",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
)

stepline_lease = sa.Table(
    "stepline_lease",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
)

# Alerts of failed instances, written in the transaction that makes the instance final and
# sent after the commit: a process that dies in between leaves the row for the next one.
stepline_alert_outbox = sa.Table(
    "stepline_alert_outbox",
    metadata,
    _id(),
    sa.Column(
        "batch_instance_id", sa.BigInteger, sa.ForeignKey("batch_instance.id"), nullable=False
    ),
    sa.Column("alert_index", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("available_at", UtcDateTime, nullable=False),
    sa.Column("claimed_by", sa.String(200)),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("sent_at", UtcDateTime),
    sa.Index(None, "status", "available_at"),
)
