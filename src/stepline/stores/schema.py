"""The tables, declared once with SQLAlchemy Core; Alembic migrations must match them.

The types of one database (PostgreSQL's JSONB, MySQL's MEDIUMTEXT and DATETIME(6),
Oracle's CLOB and TIMESTAMP) are chosen by ``load_dialect_impl`` when that database is in
use, so that importing this module does not import every database's dialect package
(a tenth of what ``stepline run`` imports).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)


class Encoded(str):
    """JSON text already serialised off the hot thread; stored as is."""

    __slots__ = ()


def json_serializer(value: Any) -> str:
    if isinstance(value, Encoded):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def oracle_native_json(dialect: sa.Dialect) -> bool:
    """Oracle 21c and later have a JSON type; before that, JSON is a CLOB checked IS JSON.

    Decided by the connected server's version; without one (offline SQL), the 19c form.
    """
    version = getattr(dialect, "server_version_info", None)
    return dialect.name == "oracle" and version is not None and version >= (21,)


class _NativeJson(sa.types.UserDefinedType[Any]):
    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "JSON"

    def get_dbapi_type(self, dbapi: Any) -> Any:
        # Bound as a CLOB: a long text bound as VARCHAR2 would become a LONG, which Oracle
        # does not convert into JSON; CLOB text it does.
        return dbapi.DB_TYPE_CLOB


class _OracleJson(sa.TypeDecorator[Any]):
    """JSON on Oracle: a CLOB of JSON text (19c) or the native JSON type (21c and later).

    Bound as JSON text in both cases (Oracle parses text into a JSON column); python-oracledb
    returns a native JSON column as Python values, where numbers may come back as Decimal.
    """

    impl = sa.CLOB
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if oracle_native_json(dialect):
            return dialect.type_descriptor(_NativeJson())
        return dialect.type_descriptor(sa.CLOB())

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        return None if value is None else json_serializer(value)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if oracle_native_json(dialect):
            return _plain_json(value)
        read = getattr(value, "read", None)  # a LOB handle, if the driver returned one
        return json.loads(read() if callable(read) else value)


def _plain_json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_json(v) for v in value]
    return value


class _Jsonb(sa.TypeDecorator[Any]):
    """PostgreSQL's JSONB, its dialect imported when a PostgreSQL database is used."""

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        from sqlalchemy.dialects.postgresql import JSONB

        return dialect.type_descriptor(JSONB())


JsonDocument = sa.JSON().with_variant(_Jsonb(), "postgresql").with_variant(_OracleJson(), "oracle")


def _oracle_clob_json(*_: Any, dialect: sa.Dialect, **__: Any) -> bool:
    return dialect.name == "oracle" and not oracle_native_json(dialect)


def is_json_check(column: str) -> sa.CheckConstraint:
    """``CHECK (column IS JSON)``: emitted only on Oracle when JSON is stored as a CLOB."""
    check = sa.CheckConstraint(f"{column} IS JSON", name=f"{column}_json")
    return check.ddl_if(callable_=_oracle_clob_json)


def declared_for(item: Any, dialect: sa.Dialect) -> bool:
    """Whether the constraint or index ``item`` exists on ``dialect`` (see ``ddl_if``)."""
    condition = getattr(item, "_ddl_if", None)
    if condition is None:
        return True
    if condition.dialect is not None and condition.dialect != dialect.name:
        return False
    decide = condition.callable_
    return decide is None or bool(decide(None, item, None, dialect=dialect))


def _not_oracle(*_: Any, dialect: sa.Dialect, **__: Any) -> bool:
    return dialect.name != "oracle"


def null_tolerant_unique(table: str, key: str, column: str) -> list[Any]:
    """``UNIQUE (key, column)`` where a NULL ``column`` never conflicts, on every database.

    Oracle treats two rows with equal ``key`` and NULL ``column`` as duplicates under a
    composite unique constraint; there a function-based unique index indexes only the rows
    whose ``column`` is set (an all-NULL index entry is not stored, so it cannot collide).
    """
    name = f"uq_{table}_{key}_{column}"
    when = sa.text(f"{column} IS NOT NULL")
    return [
        sa.UniqueConstraint(key, column, name=name).ddl_if(callable_=_not_oracle),
        sa.Index(
            name,
            sa.case((when, sa.literal_column(key)), else_=sa.null()),
            sa.case((when, sa.literal_column(column)), else_=sa.null()),
            unique=True,
        ).ddl_if(dialect="oracle"),
    ]


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Naive UTC in the database (portable), aware UTC in Python."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import DATETIME

            return dialect.type_descriptor(DATETIME(fsp=6))
        if dialect.name == "oracle":
            from sqlalchemy.dialects.oracle import TIMESTAMP

            # Oracle's DATE has no fractions of a second; leases and timings need them.
            return dialect.type_descriptor(TIMESTAMP())
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
    is_json_check("steps"),
    # Set while the batch is paused: no cron instance, no trigger (`stepline pause`).
    sa.Column("paused_at", UtcDateTime),
    # Set once the batch is deleted: gone from every list and trigger, its history readable.
    sa.Column("deleted_at", UtcDateTime),
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
    is_json_check("document"),
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
    *null_tolerant_unique("batch_instance", "definition_id", "scheduled_for"),
    *null_tolerant_unique("batch_instance", "definition_id", "idempotency_key"),
    sa.Index(None, "status"),
    is_json_check("params"),
    sa.Index(None, "finished_at"),
)

# One row per cron (or backfill) fire time that got an instance. Kept when `stepline purge`
# deletes the instance, so a purged fire time can never get a second instance.
batch_fire_time = sa.Table(
    "batch_fire_time",
    metadata,
    sa.Column(
        "definition_id",
        sa.BigInteger,
        sa.ForeignKey("batch_definition.id"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("scheduled_for", UtcDateTime, primary_key=True),
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
    # past every finished item). Migration 0005_perf_indexes.
    sa.Index("ix_step_result_items", "batch_instance_id", "step_key", "status", "map_index"),
    # Steps by status (unfinished, queued, running); map_index lets the claim of queued
    # unmapped steps skip a wide map's queued items, and id gives it their order (PostgreSQL
    # and Oracle keep equal keys in heap order: the claim sorted every queued step).
    # Migration 0006_queue_order_index.
    sa.Index("ix_step_result_queue", "batch_instance_id", "status", "map_index", "id"),
    is_json_check("result_payload"),
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


class _MediumText(sa.TypeDecorator[str]):
    """MySQL's MEDIUMTEXT, its dialect imported when a MySQL or MariaDB database is used."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        from sqlalchemy.dialects.mysql import MEDIUMTEXT

        return dialect.type_descriptor(MEDIUMTEXT())


# MySQL's TEXT holds 64 KiB, less than a capped log with its truncation note.
LogText = sa.Text().with_variant(_MediumText(), "mysql", "mariadb")

# What a runner logged during one attempt (ctx.log and Python logging from its thread),
# redacted and capped; written in the transaction that records the attempt's outcome.
batch_step_log = sa.Table(
    "batch_step_log",
    metadata,
    _id(),
    sa.Column(
        "step_result_id", sa.BigInteger, sa.ForeignKey("batch_step_result.id"), nullable=False
    ),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("text", LogText, nullable=False),
    sa.Column("truncated", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
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

# Who did what from the dashboard or the API (run, retry, cancel, pause, ...), and when.
stepline_audit = sa.Table(
    "stepline_audit",
    metadata,
    _id(),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("batch", sa.String(200)),
    sa.Column("instance_id", sa.BigInteger),
    sa.Column("detail", sa.Text),
    sa.Index(None, "instance_id"),
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
