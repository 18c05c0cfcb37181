"""SqlAlchemyStore: the store on SQLite, PostgreSQL, MariaDB/MySQL or Oracle."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, Row

from stepline.core.definition import BatchDefinition
from stepline.core.loader import parse_definition
from stepline.core.states import InstanceStatus, StepStatus
from stepline.errors import (
    Conflict,
    InvalidSetting,
    NotFound,
    StoreRejected,
    StoreUnavailable,
    clip,
    shown,
)
from stepline.redact import redact_url
from stepline.sql_errors import error_codes
from stepline.stores import listing
from stepline.stores.base import (
    AttemptRecord,
    AuditRecord,
    ClaimedStep,
    InstanceQuery,
    InstanceRecord,
    InstanceTransaction,
    InstanceWatch,
    KeptAttempt,
    PendingAlert,
    RunningStep,
    StepOverview,
    StepResultRecord,
    StepState,
    Store,
    StoredDefinition,
    iter_chunks,
)
from stepline.stores.hotpath import HotStatement
from stepline.stores.maintenance import SqlMaintenance
from stepline.stores.schema import (
    UtcDateTime,
    batch_definition,
    batch_definition_version,
    batch_fire_time,
    batch_instance,
    batch_step_attempt,
    batch_step_result,
    json_serializer,
    stepline_alert_outbox,
    stepline_lease,
    stepline_worker,
)
from stepline.stores.transaction import (
    CHUNK,
    ItemCursors,
    SqlInstanceTransaction,
    StepRows,
    db_now,
    load_results,
    not_in_chunks,
    utcnow,
)

R = batch_step_result
BI = batch_instance
ALERT_ATTEMPTS = 8  # then an alert that never went through is kept as abandoned


@dataclass(frozen=True)
class Timeouts:
    """How long Stepline waits on its own database, so a stalled server fails a call
    (``StoreUnavailable``) instead of hanging it.

    ``connect`` bounds opening a connection (TCP and handshake); ``statement`` bounds one
    statement: PostgreSQL's ``statement_timeout``, PyMySQL's socket read/write timeouts,
    SQLite's busy timeout (0 = no limit; SQLite then waits 30 s). Migrations run on a
    connection without the statement limit.
    """

    connect: float = 10.0
    statement: float = 30.0


def _driver_url(url: str) -> sa.URL:
    """The SQLAlchemy URL of ``url``, with our default drivers; raises InvalidSetting."""
    full = url
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        full = "postgresql+psycopg://" + url.split("://", 1)[1]
    elif url.startswith("mysql://") or url.startswith("mariadb://"):
        full = "mysql+pymysql://" + url.split("://", 1)[1]
    elif url.startswith("oracle://"):
        full = "oracle+oracledb://" + url.split("://", 1)[1]
    try:
        return sa.make_url(full)
    except (sa.exc.ArgumentError, ValueError):
        raise InvalidSetting(_bad_url(url, "is not a database URL")) from None


def _bad_url(url: str, problem: str) -> str:
    return (
        f"database URL {clip(redact_url(url) if '://' in url else url)!r} {problem}; "
        "use e.g. sqlite:///stepline.db, postgresql://user@host/db or mysql://user@host/db "
        "(--db or STEPLINE_DB)"
    )


def create_engine(url: str, timeouts: Timeouts | None = None, **options: Any) -> Engine:
    """An engine tuned per database: WAL and IMMEDIATE transactions on SQLite,
    READ COMMITTED on MariaDB/MySQL, psycopg 3 for a bare ``postgresql://`` URL, and the
    connect and statement ``timeouts``. Raises InvalidSetting for a URL that names no
    database we can open."""
    timeouts = timeouts or Timeouts()
    sa_url = _driver_url(url)
    backend = sa_url.get_backend_name()
    kwargs: dict[str, Any] = {}
    if backend != "oracle":
        # Oracle's dialect has no JSON type to take a serializer: schema.JsonDocument's
        # Oracle variant serialises with the same json_serializer itself.
        kwargs["json_serializer"] = json_serializer
    statement = timeouts.statement
    if backend == "sqlite":
        kwargs["connect_args"] = {"timeout": statement or 30.0, "check_same_thread": False}
    elif backend in ("mysql", "mariadb"):
        kwargs["isolation_level"] = "READ COMMITTED"
        # PyMySQL times the handshake with its read timeout: the connect timeout there,
        # then the statement timeout (see _time_mysql_statements).
        connect = timeouts.connect
        kwargs["connect_args"] = {
            "connect_timeout": connect,
            "read_timeout": connect,
            "write_timeout": connect,
        }
    elif backend == "postgresql":
        # libpq counts whole seconds and treats 1 as 2.
        connect_args: dict[str, Any] = {"connect_timeout": max(2, math.ceil(timeouts.connect))}
        if statement:
            own = f"-c statement_timeout={int(statement * 1000)}"
            given = sa_url.query.get("options")
            connect_args["options"] = f"{given} {own}" if isinstance(given, str) else own
        # statement_timeout is the server's: a host or network that goes silent would hold
        # a call for as long as the kernel keeps the connection (hours). What the URL sets
        # itself is kept.
        for key, value in _dead_peer(timeouts.connect).items():
            if key not in sa_url.query:
                connect_args[key] = value
        kwargs["connect_args"] = connect_args
    elif backend == "oracle":
        kwargs["connect_args"] = {
            "tcp_connect_timeout": timeouts.connect,
            "expire_time": 1,  # minutes between keepalive probes (the smallest there is)
        }
    kwargs.update(options)
    try:
        engine = sa.create_engine(sa_url, **kwargs)
    except sa.exc.NoSuchModuleError:
        raise InvalidSetting(_bad_url(url, f"names an unknown database {backend!r}")) from None
    except ImportError as exc:
        extra = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}.get(backend)
        extra = extra or ("oracle" if backend == "oracle" else None)
        hint = f"pip install 'stepline[{extra}]'" if extra else "install its driver"
        raise InvalidSetting(
            _bad_url(url, f"needs a driver that is not installed ({exc.name}): {hint}")
        ) from None
    except (sa.exc.ArgumentError, ValueError, TypeError) as exc:
        raise InvalidSetting(_bad_url(url, f"cannot be used: {exc}")) from None
    if backend == "sqlite":
        _tune_sqlite(engine, statement or 30.0)
        return engine
    if backend in ("mysql", "mariadb") and sa_url.get_driver_name() == "pymysql":
        _time_mysql_statements(engine, statement or None)
    if backend == "oracle":
        _time_oracle_calls(engine, statement)
    if backend == "postgresql" and sa_url.get_driver_name() == "psycopg" and statement:
        _answer_within(engine, statement + timeouts.connect)
    _ping_when_idle(engine)
    return engine


PING_AFTER_IDLE = 1.0
"""Seconds a pooled connection may rest before a checkout pings it."""
DISPOSE_WAIT = 5.0
"""Seconds ``dispose`` waits for a transaction on the pinned connection to end."""


def _ping_when_idle(engine: Engine) -> None:
    """``pool_pre_ping``, except for a connection back in the pool for under a second.

    The driver checks a connection out for every transaction, several hundred a second;
    a ping each time would be one more round trip per step. A connection that has rested
    longer (a server restart, a proxy's idle timeout) is pinged, and replaced if dead.
    """

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info["stepline_used"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        used = record.info.get("stepline_used")
        if used is not None and time.monotonic() - used < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool drops this connection and checks out (or opens) another.
            raise sa.exc.DisconnectionError(str(exc)) from exc


_ORACLE_CALL_TIMEOUTS = frozenset({"DPY-4024", "DPI-1067", "DPI-1080"})
"""python-oracledb's "call timeout exceeded" (thin, thick), which it raises as a plain
DatabaseError: the database did not answer in time."""


def _dead_peer(connect: float) -> dict[str, int]:
    """libpq's TCP settings that end a call whose server went silent in about twice the
    connect timeout: keepalive probes while it waits for an answer (a server at work answers
    them), and TCP_USER_TIMEOUT for what it sent and was never acknowledged."""
    seconds = max(1, math.ceil(connect))
    return {
        "keepalives": 1,
        "keepalives_idle": seconds,
        "keepalives_interval": max(1, math.ceil(seconds / 3)),
        "keepalives_count": 3,
        "tcp_user_timeout": 2 * seconds * 1000,
    }


def _answer_within(engine: Engine, seconds: float) -> None:
    """psycopg waits at most ``seconds`` for each answer of the server (the statement
    timeout plus the connect timeout: by then the server has cancelled the statement and
    said so), then closes the connection and raises, like a connection that broke.

    ``statement_timeout`` is the server's, and the TCP settings of :func:`_dead_peer` end
    a call only when nothing acknowledges the packets. A server process that is frozen, or
    a pooler or proxy in front of it that hangs, still has a kernel that acknowledges:
    libpq would wait for its answer for ever, and so would the caller (``serve``'s driver,
    ``stepline run``, a worker's recorder).

    Set on each connection once made (the pool's ``connect`` event), whoever made it: a
    ``do_connect`` hook of the application (a password from a vault) still works."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.wait = AnsweredWithin(dbapi_conn, seconds)


class AnsweredWithin:
    """A psycopg connection's ``wait`` (through which every round trip waits for the server),
    ending each wait after ``seconds`` with psycopg's own ``wait(timeout=)``."""

    def __init__(self, conn: Any, seconds: float) -> None:
        self.seconds = seconds
        self._conn = weakref.ref(conn)
        self._wait = type(conn).wait

    def __call__(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        conn = self._conn()
        assert conn is not None  # it is the caller
        if timeout is not None:  # psycopg's own limit (its cancellation on Ctrl-C)
            return self._wait(conn, gen, interval, timeout)
        try:
            return self._wait(conn, gen, interval, self.seconds)
        except _wait_timeout():
            # A query may still be running, or an answer half read: no later call may use
            # this connection. Closed, it is a broken connection to the pool.
            import psycopg

            conn.pgconn.finish()
            raise psycopg.OperationalError(
                f"the server did not answer in {self.seconds:g} s; the connection is closed"
            ) from None


@functools.cache
def _wait_timeout() -> Any:
    """What psycopg's ``wait(timeout=)`` raises (pyproject asks for psycopg 3.3, which has
    both). A private name, so looked up: the frozen-server test in
    tests/acceptance/test_stalled_database.py fails if it goes."""
    import psycopg

    return getattr(psycopg.errors, "_WaitTimeout", ())


def _time_oracle_calls(engine: Engine, seconds: float) -> None:
    """python-oracledb's ``call_timeout``: no round trip may take longer than the statement
    timeout (Oracle has no per-session statement limit to set instead). 0: no limit."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.call_timeout = int(seconds * 1000)


def _time_mysql_statements(engine: Engine, seconds: float | None) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # PyMySQL has no public setter; it re-applies these before its next read or write.
        dbapi_conn._read_timeout = dbapi_conn._write_timeout = seconds


def _wal(cursor: Any, seconds: float) -> None:
    """Switch the database to WAL. Processes that open a new database at the same moment
    all switch it, and SQLite answers "database is locked" to the switch without waiting
    in its busy handler: try again until the busy timeout runs out."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # sqlite3.OperationalError
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _tune_sqlite(engine: Engine, busy_seconds: float) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves, so write transactions take the lock up front
        # instead of failing with SQLITE_BUSY when a read is upgraded to a write.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        _wal(cursor, busy_seconds)
        # NORMAL in WAL mode survives a killed process; only an OS crash can lose the
        # last commits, which the guarantee (kill -9 of our process) does not cover.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        driver = conn.connection.driver_connection
        if driver.in_transaction:  # type: ignore[union-attr]
            return  # a Core statement joining the hot path's transaction (see _pinned_...)
        mode = "BEGIN" if conn.get_execution_options().get("stepline_read") else "BEGIN IMMEDIATE"
        driver.execute(mode)  # type: ignore[union-attr]


_PID = [os.getpid()]
"""This process's id, kept by a fork hook: ``os.getpid()`` is a system call, and the
pinned connection is checked against it at every step."""
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


class SqlAlchemyStore(SqlMaintenance, Store):
    def __init__(
        self, url: str, *, engine: Engine | None = None, timeouts: Timeouts | None = None
    ) -> None:
        self.url = url
        self._timeouts = None if engine is not None else (timeouts or Timeouts())
        self.engine = engine or create_engine(url, self._timeouts)
        self.dialect = self.engine.dialect.name
        # SQLite has one writer; queueing our own threads here is cheaper than its
        # busy-wait handler, which sleeps in steps of up to 100 ms.
        self._write_lock = threading.RLock() if self.dialect == "sqlite" else None
        self._item_cursors = ItemCursors()
        self._step_rows: StepRows = {}
        dbapi = self.engine.dialect.loaded_dbapi
        self._dbapi_error: type[Exception] = dbapi.Error
        self._dbapi_transient: tuple[type[Exception], ...] = (
            dbapi.OperationalError,
            dbapi.InterfaceError,
        )
        self._names: dict[int, str] = {}
        self._pickups: Engine | None = None
        self._pickup_conn: Connection | None = None
        """Kept checked out: a pool checkout and check-in cost more than the pickup itself."""
        self._pickup_lock = threading.Lock()
        self._definitions: dict[tuple[int, int], BatchDefinition] = {}
        # The hot path's own connection (see _pinned_transaction); one thread at a time.
        memory = self.dialect == "sqlite" and self.engine.url.database in (None, "", ":memory:")
        self._pin_lock = None if memory else threading.Lock()
        self._pinned: Connection | None = None
        self._pinned_pid = 0
        self._pinned_used = 0.0
        quote = self.engine.dialect.identifier_preparer.quote
        self._lock_instance = sa.text(
            f"SELECT {', '.join(quote(c.name) for c in BI.c)} FROM batch_instance WHERE id = :id"
            + ("" if self.dialect == "sqlite" else " FOR UPDATE")
        ).columns(*BI.c)
        self._lock_status = HotStatement(
            "SELECT status, cancel_requested, owner_id FROM batch_instance WHERE id = :id"
            + ("" if self.dialect == "sqlite" else " FOR UPDATE")
        )

    def __repr__(self) -> str:
        return f"SqlAlchemyStore({self.shown_url!r})"

    @property
    def shown_url(self) -> str:
        """The URL for messages and logs, its password masked."""
        shown = self.engine.url.render_as_string(hide_password=True)
        # A password in the query (?password=) is not the URL's password: mask it too.
        return redact_url(shown) if "?" in shown else shown

    # -- plumbing -------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._write_lock or nullcontext():
            try:
                with self.engine.begin() as conn:
                    yield conn
            except (sa.exc.DBAPIError, self._dbapi_error) as exc:
                translated = self._translate(exc)
                if translated is exc:
                    raise
                raise translated from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(stepline_read=True)
                with conn.begin():
                    yield conn
        except (sa.exc.DBAPIError, self._dbapi_error) as exc:
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from exc

    def _translate(self, exc: Exception) -> Exception:
        """A database error as StoreUnavailable (passing: retry later) or StoreRejected.

        The hot path runs on the driver's cursor, so its errors arrive unwrapped."""
        if isinstance(exc, sa.exc.IntegrityError):
            return exc  # callers handle a unique violation (another process was first)
        original = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        transient = (
            isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)
            or (isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated)
            or isinstance(original, self._dbapi_transient)
            or not _ORACLE_CALL_TIMEOUTS.isdisjoint(error_codes(exc))
        )
        if transient:
            return StoreUnavailable(f"database {self.shown_url} is unavailable: {original}")
        return StoreRejected(f"database {self.shown_url} refused the write: {original}")

    def initialize(self) -> None:
        from stepline.stores.migrations import is_current, upgrade

        try:
            if is_current(self.engine):
                return
            # A migration may rewrite a big table: no statement timeout on its connection.
            # (It is checked above on a timed one, so a stalled server still fails fast.)
            engine = self.engine
            if self._timeouts is not None and self._timeouts.statement:
                untimed = replace(self._timeouts, statement=0.0)
                engine = create_engine(self.url, untimed, poolclass=sa.pool.NullPool)
            try:
                upgrade(engine)
            finally:
                if engine is not self.engine:
                    engine.dispose()
        except sa.exc.OperationalError as exc:
            raise _unavailable(self, exc) from exc
        except sa.exc.DatabaseError as exc:  # SQLite: "file is not a database"
            raise InvalidSetting(f"database {self.shown_url} cannot be used: {exc.orig}") from exc

    def dispose(self) -> None:
        # A transaction still running on the pinned connection (another thread) keeps it;
        # closing the store does not wait for ever on it.
        if self._pin_lock is not None and self._pin_lock.acquire(timeout=DISPOSE_WAIT):
            try:
                pinned, self._pinned = self._pinned, None
                if pinned is not None and self._pinned_pid == os.getpid():
                    # Closed for good, not checked in: the pool it came from may be gone
                    # already (a dispose that found it in use by another thread).
                    _discard(pinned)
            finally:
                self._pin_lock.release()
        self.engine.dispose()
        if self._pickups is not None:
            if self._pickup_lock.acquire(timeout=DISPOSE_WAIT):
                try:
                    conn, self._pickup_conn = self._pickup_conn, None
                    if conn is not None:
                        _discard(conn)
                finally:
                    self._pickup_lock.release()
            self._pickups.dispose()

    def _forget(self, definition_id: int) -> None:
        self._names.pop(definition_id, None)
        for key in [k for k in self._definitions if k[0] == definition_id]:
            del self._definitions[key]

    def payload_limit(self) -> int | None:
        if self.dialect not in ("mysql", "mariadb"):
            return None
        with self._read() as conn:
            packet = int(conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one())
        packet = min(packet, 16 * 1024 * 1024)  # PyMySQL's own limit on what it sends
        # The statement carries the payload escaped (up to twice its size) beside the rest.
        return max(packet - 64 * 1024, 0) // 2

    # -- definitions ----------------------------------------------------------------------

    def apply(self, definition: BatchDefinition) -> StoredDefinition:
        try:
            return self._apply(definition)
        except sa.exc.IntegrityError:
            # Another process created this batch at the same moment (a lock cannot cover a
            # row that does not exist yet); its row exists now, so apply again as an update.
            return self._apply(definition)

    def _apply(self, definition: BatchDefinition) -> StoredDefinition:
        document = definition.to_document()
        now = utcnow()
        with self._write() as conn:
            row = conn.execute(
                sa.select(batch_definition)
                .where(batch_definition.c.name == definition.name)
                .with_for_update()
            ).first()
            if row is None:
                definition_id = conn.execute(
                    sa.insert(batch_definition).values(
                        name=definition.name,
                        cron=definition.cron,
                        timezone=definition.timezone,
                        steps=document["steps"],
                        version=1,
                        created_at=now,
                        updated_at=now,
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
                version = 1
                created = now
            else:
                current = conn.execute(
                    sa.select(batch_definition_version.c.document).where(
                        batch_definition_version.c.definition_id == row.id,
                        batch_definition_version.c.version == row.version,
                    )
                ).scalar_one()
                if row.deleted_at is not None:
                    # Applying a deleted batch revives it (its history was kept).
                    conn.execute(
                        sa.update(batch_definition)
                        .where(batch_definition.c.id == row.id)
                        .values(deleted_at=None)
                    )
                if current == document:
                    # The same document: no need to parse it back (500 steps: ~5 ms).
                    self._definitions.setdefault((row.id, row.version), definition)
                    return self._stored(row.id, row.name, row.version, document, row)
                definition_id, version, created = row.id, row.version + 1, row.created_at
                conn.execute(
                    sa.update(batch_definition)
                    .where(batch_definition.c.id == row.id)
                    .values(
                        cron=definition.cron,
                        timezone=definition.timezone,
                        steps=document["steps"],
                        version=version,
                        updated_at=now,
                    )
                )
            conn.execute(
                sa.insert(batch_definition_version).values(
                    definition_id=definition_id,
                    version=version,
                    document=document,
                    created_at=now,
                )
            )
        self._definitions[(definition_id, version)] = definition
        return StoredDefinition(definition_id, definition.name, version, definition, created, now)

    def _stored(
        self, definition_id: int, name: str, version: int, document: Any, row: Row[Any]
    ) -> StoredDefinition:
        definition = self._definitions.get((definition_id, version))
        if definition is None:
            # Stored documents were validated when applied; runners are resolved when run.
            definition = parse_definition(document, f"batch {name} v{version}", check_runners=False)
            self._definitions[(definition_id, version)] = definition
        return StoredDefinition(
            definition_id,
            name,
            version,
            definition,
            row.created_at,
            row.updated_at,
            row.paused_at,
        )

    def definition(self, name: str, version: int | None = None) -> StoredDefinition:
        d, v = batch_definition, batch_definition_version
        query = (
            sa.select(d, v.c.document, v.c.version.label("doc_version"))
            .join(v, v.c.definition_id == d.c.id)
            .where(d.c.name == name)
        )
        if version is None:
            query = query.where(v.c.version == d.c.version, d.c.deleted_at.is_(None))
        else:
            query = query.where(v.c.version == version)
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None:
            what = f"batch {shown(name)}" + (f" version {version}" if version is not None else "")
            raise NotFound(
                f"{what} does not exist", hint="`stepline apply FILE` stores a definition"
            )
        return self._stored(row.id, row.name, row.doc_version, row.document, row)

    def definitions(self) -> list[StoredDefinition]:
        d, v = batch_definition, batch_definition_version
        query = (
            sa.select(d, v.c.document)
            .join(v, (v.c.definition_id == d.c.id) & (v.c.version == d.c.version))
            .where(d.c.deleted_at.is_(None))
            .order_by(d.c.name)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [self._stored(r.id, r.name, r.version, r.document, r) for r in rows]

    def definition_for(self, instance: InstanceRecord) -> BatchDefinition:
        """The definition version an instance started with (cached: versions never change)."""
        key = (instance.definition_id, instance.definition_version)
        if key not in self._definitions:
            self.definition(instance.batch, instance.definition_version)
        return self._definitions[key]

    def _name(self, conn: Connection, definition_id: int) -> str:
        if definition_id not in self._names:
            self._names[definition_id] = conn.execute(
                sa.select(batch_definition.c.name).where(batch_definition.c.id == definition_id)
            ).scalar_one()
        return self._names[definition_id]

    # -- instances ------------------------------------------------------------------------

    def create_instance(
        self,
        stored: StoredDefinition,
        params: Mapping[str, Any],
        trigger: str,
        *,
        scheduled_for: datetime | None = None,
        idempotency_key: str | None = None,
        owner: str | None = None,
        skipped: str | None = None,
    ) -> tuple[InstanceRecord, bool]:
        graph = stored.definition.graph
        now = utcnow()
        merged = {**stored.definition.params, **params}
        status = InstanceStatus.CANCELLED if skipped else InstanceStatus.QUEUED
        try:
            with self._write() as conn:
                if scheduled_for is not None:
                    # The fire time's own row outlives a purge of its instance: a fire time
                    # that ran once, purged or not, refuses a second instance.
                    conn.execute(
                        sa.insert(batch_fire_time).values(
                            definition_id=stored.id, scheduled_for=scheduled_for
                        )
                    )
                instance_id = conn.execute(
                    sa.insert(BI).values(
                        definition_id=stored.id,
                        definition_version=stored.version,
                        status=status.value,
                        params=merged,
                        trigger=trigger,
                        scheduled_for=scheduled_for,
                        idempotency_key=idempotency_key,
                        owner_id=owner,
                        cancel_requested=False,
                        created_at=now,
                        finished_at=now if skipped else None,
                        error=skipped,
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
                rows = [
                    {
                        "batch_instance_id": instance_id,
                        "step_key": key,
                        "map_index": -1,
                        # Roots start pending too: the first advance decides them (their
                        # condition) like any step. A skipped trigger's steps are cancelled.
                        "status": (StepStatus.CANCELLED if skipped else StepStatus.PENDING).value,
                        "attempt": 0,
                        "first_attempt": 1,
                        "created_at": now,
                        "upstream_pending": len(graph.predecessors.get(key, ())),
                    }
                    for key in graph.keys
                ]
                conn.execute(sa.insert(R), rows)
        except sa.exc.IntegrityError:
            if scheduled_for is None and idempotency_key is None:
                raise
            column, value = (
                (BI.c.scheduled_for, scheduled_for)
                if scheduled_for is not None
                else (BI.c.idempotency_key, idempotency_key)
            )
            with self._read() as conn:
                existing = conn.execute(
                    sa.select(BI).where(BI.c.definition_id == stored.id, column == value)
                ).first()
                if existing is None:
                    raise Conflict(
                        f"{stored.name} already ran for {value}; that instance was purged"
                    ) from None
                return self._instance(conn, existing), False
        self._names[stored.id] = stored.name
        return (
            InstanceRecord(
                instance_id,
                stored.name,
                stored.id,
                stored.version,
                status,
                merged,
                trigger,
                scheduled_for,
                now,
                None,
                now if skipped else None,
                skipped,
                owner,
                False,
            ),
            True,
        )

    def _instance(self, conn: Connection, row: Row[Any]) -> InstanceRecord:
        return InstanceRecord(
            id=row.id,
            batch=self._name(conn, row.definition_id),
            definition_id=row.definition_id,
            definition_version=row.definition_version,
            status=InstanceStatus(row.status),
            params=row.params,
            trigger=row.trigger,
            scheduled_for=row.scheduled_for,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            error=row.error,
            owner_id=row.owner_id,
            cancel_requested=bool(row.cancel_requested),
        )

    def active_count(self, definition_id: int) -> int:
        active = [InstanceStatus.QUEUED.value, InstanceStatus.RUNNING.value]
        with self._read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(BI)
                    .where(BI.c.definition_id == definition_id, BI.c.status.in_(active))
                ).scalar_one()
            )

    def waiting_instances(self, limit: int = 100) -> list[InstanceRecord]:
        query = (
            sa.select(BI)
            .where(BI.c.status == InstanceStatus.QUEUED.value, BI.c.owner_id.is_(None))
            .order_by(BI.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return [self._instance(conn, r) for r in conn.execute(query).all()]

    def admit(self, instance_id: int, owner: str, max_active: int) -> bool:
        with self._write() as conn:
            row = conn.execute(
                sa.select(BI.c.definition_id, BI.c.owner_id, BI.c.status).where(
                    BI.c.id == instance_id
                )
            ).first()
            if row is None or row.owner_id not in (None, owner) or row.status != "queued":
                return False
            conn.execute(
                sa.select(batch_definition.c.id)
                .where(batch_definition.c.id == row.definition_id)
                .with_for_update()
            )
            running = conn.execute(
                sa.select(sa.func.count())
                .select_from(BI)
                .where(
                    BI.c.definition_id == row.definition_id,
                    BI.c.status == InstanceStatus.RUNNING.value,
                )
            ).scalar_one()
            if running >= max_active:
                return False
            taken = conn.execute(
                sa.update(BI)
                .where(
                    BI.c.id == instance_id,
                    sa.or_(BI.c.owner_id.is_(None), BI.c.owner_id == owner),
                    BI.c.status == InstanceStatus.QUEUED.value,
                )
                .values(owner_id=owner, status=InstanceStatus.RUNNING.value, started_at=utcnow())
            ).rowcount
            return bool(taken)

    def release_waiting(self, instance_id: int, owner: str) -> bool:
        with self._write() as conn:
            return bool(
                conn.execute(
                    sa.update(BI)
                    .where(
                        BI.c.id == instance_id,
                        BI.c.owner_id == owner,
                        BI.c.status == InstanceStatus.QUEUED.value,
                    )
                    .values(owner_id=None)
                ).rowcount
            )

    def skip_waiting(self, instance_id: int, owner: str, reason: str) -> bool:
        now = utcnow()
        with self._write() as conn:
            taken = conn.execute(
                sa.update(BI)
                .where(
                    BI.c.id == instance_id,
                    sa.or_(BI.c.owner_id.is_(None), BI.c.owner_id == owner),
                    BI.c.status == InstanceStatus.QUEUED.value,
                )
                .values(status=InstanceStatus.CANCELLED.value, finished_at=now, error=reason)
            ).rowcount
            if taken:
                conn.execute(
                    sa.update(R)
                    .where(R.c.batch_instance_id == instance_id, R.c.status == "pending")
                    .values(status=StepStatus.CANCELLED.value, finished_at=now, error=reason)
                )
            return bool(taken)

    def instance_transaction(
        self, instance_id: int, known: InstanceRecord | None = None
    ) -> AbstractContextManager[InstanceTransaction]:
        if known is not None and self._pin_lock is not None and self._pin_lock.acquire(False):
            return _PinnedTransaction(self, instance_id, known)  # the per-step path
        return self._pooled_transaction(instance_id, known)

    @contextmanager
    def _pooled_transaction(
        self, instance_id: int, known: InstanceRecord | None
    ) -> Iterator[InstanceTransaction]:
        with self._write() as conn:
            if known is not None:
                instance = self._locked(conn, instance_id, known)
            else:
                row = conn.execute(self._lock_instance, {"id": instance_id}).first()
                if row is None:
                    raise NotFound(f"instance {instance_id} does not exist")
                instance = self._instance(conn, row)
            yield SqlInstanceTransaction(conn, instance, self._item_cursors, self._step_rows)

    def _locked(self, conn: Connection, instance_id: int, known: InstanceRecord) -> InstanceRecord:
        """Lock the instance row; ``known`` with what other processes may have changed.

        Only status, the cancel flag and the owner change under the driver's feet; it
        already holds the rest, so the per-step lock reads three columns."""
        found = self._lock_status.run(conn, {"id": instance_id}).fetchone()
        if found is None:
            raise NotFound(f"instance {instance_id} does not exist")
        status, cancel, owner = found
        same = status == known.status and owner == known.owner_id  # StrEnum == its text
        if same and bool(cancel) == known.cancel_requested:
            return known
        return replace(
            known,
            status=InstanceStatus(status),
            cancel_requested=bool(cancel),
            owner_id=owner,
        )

    def _pinned_connection(self) -> Connection:
        conn = self._pinned
        if conn is not None and self._pinned_pid != _PID[0]:
            conn = self._pinned = None  # a forked child: the parent's connection is not ours
        rested = time.monotonic() - self._pinned_used >= PING_AFTER_IDLE
        if conn is not None and rested and self.dialect != "sqlite":
            # As the pool does for a connection that rested (a restarted server).
            try:
                self.engine.dialect.do_ping(conn.connection.dbapi_connection)  # type: ignore[arg-type]
            except self._dbapi_error:
                self._unpin(conn, None)
                conn = None
        if conn is None:
            try:
                conn = self.engine.connect()
            except (sa.exc.DBAPIError, self._dbapi_error) as exc:
                self._raise_translated(exc)
                raise
            self._pinned, self._pinned_pid = conn, _PID[0]
        return conn

    def _unpin(self, conn: Connection, error: BaseException | None) -> None:
        """Roll back the pinned connection's transaction. A connection whose state is in
        doubt is closed, not kept: after any database error, an interrupt (it may have
        struck inside a driver call), or ``error`` None."""
        keep = isinstance(error, Exception) and not isinstance(
            error, sa.exc.DBAPIError | self._dbapi_error
        )
        self._pinned = None  # pinned again only once the rollback is known to be done
        try:
            if conn.in_transaction():
                conn.rollback()
            else:
                conn.connection.driver_connection.rollback()  # type: ignore[union-attr]
        except Exception:
            keep = False
        except BaseException:
            _discard(conn)
            raise
        if keep and not conn.invalidated:
            self._pinned = conn
            return
        _discard(conn)

    def _raise_translated(self, exc: BaseException) -> None:
        """Raise a database error as the store's (see _translate); return for any other."""
        if isinstance(exc, sa.exc.DBAPIError | self._dbapi_error):
            translated = self._translate(exc)
            if translated is not exc:
                raise translated from exc

    def pickup(
        self, row_id: int, attempt: int, owner: str, *, now: datetime | None = None
    ) -> tuple[int, ClaimedStep] | None:
        now = now or utcnow()
        params = {"id": row_id, "attempt": attempt, "owner": owner, "now": now}
        if self.dialect == "postgresql":
            # One statement, committed on its own without waiting for an fsync: a pickup lost
            # in a database crash only lets the attempt run again (the owner sends it again),
            # and the outcome's own synchronous commit flushes it before anything depends on it.
            rows = self._pickup_pg(params, _PICKUP_RETURNING)
            row = rows[0] if rows else None
        else:
            with self._write() as conn:
                if self.dialect == "sqlite":
                    row = _PICKUP_RETURNING.run(conn, params).fetchone()
                else:
                    row = None
                    if _PICKUP.run(conn, params).rowcount:
                        row = _PICKED.run(conn, {"id": row_id}).fetchone()
        if row is None:
            return None
        instance_id, key, index, first = row
        return int(instance_id), ClaimedStep(row_id, key, index, attempt, now, first)

    def pickup_many(
        self, row_ids: Sequence[int], attempt: int, owner: str, *, now: datetime | None = None
    ) -> list[tuple[int, ClaimedStep]]:
        if not row_ids:
            return []
        now = now or utcnow()
        if len(row_ids) == 1:
            one = self.pickup(row_ids[0], attempt, owner, now=now)
            return [] if one is None else [one]
        params = {"ids": list(row_ids), "attempt": attempt, "owner": owner, "now": now}
        rows: Sequence[Any]
        if self.dialect == "postgresql":  # as pickup: its own connection, no fsync wait
            rows = self._pickup_pg(params, _PICKUP_MANY_RETURNING)
        else:
            rows = self._take(params, _PICKUP_MANY_RETURNING, _PICKUP_MANY, _FREE)
        found = {int(r[0]): r for r in rows}
        picked = []
        for row_id in row_ids:  # in the order given: the order they were claimed in
            r = found.pop(row_id, None)
            if r is not None:
                _, instance_id, key, index, first = r
                picked.append(
                    (int(instance_id), ClaimedStep(row_id, key, index, attempt, now, first))
                )
        return picked

    def hand_back(
        self, row_ids: Sequence[int], attempt: int, owner: str, *, picked_at: datetime
    ) -> list[int]:
        if not row_ids:
            return []
        params = {"ids": list(row_ids), "attempt": attempt, "owner": owner, "picked": picked_at}
        # A synchronous commit, unlike the pickup: a hand-back lost in a crash would leave the
        # steps to a live process that no longer means to run them.
        back = {int(r[0]) for r in self._take(params, _HAND_BACK_RETURNING, _HAND_BACK, _HELD)}
        return [row_id for row_id in row_ids if row_id in back]

    def _take(
        self,
        params: dict[str, Any],
        returning: HotStatement,
        update: HotStatement,
        locked: HotStatement,
    ) -> Sequence[Any]:
        """Update the rows of ``params["ids"]`` that match, in one transaction, and return
        them: ``returning`` (``UPDATE ... RETURNING``) where the database has it; on MariaDB
        and Oracle, ``locked`` selects and locks them, then ``update`` changes them."""
        with self._write() as conn:
            if self.dialect in ("sqlite", "postgresql"):
                return returning.run(conn, params).fetchall()  # type: ignore[no-any-return]
            rows = locked.run(conn, params).fetchall()
            if rows:
                update.run(conn, {**params, "ids": [r[0] for r in rows]})
            return rows  # type: ignore[no-any-return]

    def _pickup_pg(self, params: dict[str, Any], statement: HotStatement) -> list[Any]:
        """A pickup on the connection kept for it, its rows; a kept connection that fails
        (the server restarted meanwhile) is replaced once, as a pre-ping would have."""
        with self._pickup_lock:
            kept = self._pickup_conn is not None
            try:
                return self._pickup_on_kept(params, statement)
            except StoreUnavailable:
                if not kept:
                    raise
                return self._pickup_on_kept(params, statement)

    def _pickup_on_kept(self, params: dict[str, Any], statement: HotStatement) -> list[Any]:
        if self._pickup_conn is None:
            try:
                self._pickup_conn = self._pickup_engine().connect()
            except sa.exc.DBAPIError as exc:
                self._raise_translated(exc)
                raise
        try:
            return statement.run(self._pickup_conn, params).fetchall()  # type: ignore[no-any-return]
        except BaseException as exc:
            conn, self._pickup_conn = self._pickup_conn, None  # broken or interrupted
            _discard(conn)
            self._raise_translated(exc)
            raise

    def _pickup_engine(self) -> Engine:
        if self._pickups is None:
            engine = create_engine(
                self.url,
                self._timeouts,
                isolation_level="AUTOCOMMIT",
                pool_size=1,
                pool_pre_ping=self.engine.pool._pre_ping,
            )

            @event.listens_for(engine, "connect")
            def _no_fsync(dbapi_conn: Any, _record: Any) -> None:
                with dbapi_conn.cursor() as cursor:
                    cursor.execute("SET synchronous_commit = off")

            self._pickups = engine
        return self._pickups

    def running_steps(self, instance_ids: Sequence[int]) -> list[RunningStep]:
        out: list[RunningStep] = []
        with self._read() as conn:
            for chunk in iter_chunks(list(instance_ids), 500):
                query = sa.select(
                    R.c.batch_instance_id, R.c.id, R.c.step_key, R.c.map_index, R.c.attempt,
                    R.c.first_attempt, R.c.owner_id, R.c.started_at,
                ).where(
                    R.c.batch_instance_id.in_(chunk), R.c.status == StepStatus.RUNNING.value
                )  # fmt: skip
                out.extend(RunningStep(*r) for r in conn.execute(query))
        return out

    def watch(self, instance_ids: Sequence[int]) -> dict[int, InstanceWatch]:
        available = sa.func.coalesce(R.c.available_at, R.c.created_at, type_=UtcDateTime())
        nxt = (
            sa.select(sa.func.min(available, type_=UtcDateTime()))
            .where(
                R.c.batch_instance_id == BI.c.id,
                R.c.status == StepStatus.QUEUED.value,
                sa.or_(R.c.map_index < 0, R.c.available_at.is_not(None)),
            )
            .scalar_subquery()
        )
        out: dict[int, InstanceWatch] = {}
        with self._read() as conn:
            for chunk in iter_chunks(list(instance_ids), 500):
                query = sa.select(BI.c.id, BI.c.status, BI.c.cancel_requested, nxt).where(
                    BI.c.id.in_(chunk)
                )
                for iid, status, cancel, at in conn.execute(query):
                    if at is not None and at.tzinfo is None:
                        at = at.replace(tzinfo=UTC)
                    out[iid] = InstanceWatch(InstanceStatus(status), bool(cancel), at)
        return out

    def instance(self, instance_id: int) -> InstanceRecord:
        if not _ID_MIN <= instance_id <= _ID_MAX:  # the driver would overflow: none has it
            raise _no_instance(instance_id)
        with self._read() as conn:
            row = conn.execute(_INSTANCE, {"id": instance_id}).first()
            if row is None:
                raise _no_instance(instance_id)
            return self._instance(conn, row)

    def instances(
        self,
        batch: str | None = None,
        status: InstanceStatus | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
    ) -> list[InstanceRecord]:
        query = InstanceQuery(batch=batch, status=status, before_id=before)
        return listing.find_instances(self, query, limit)

    def find_instances(self, query: InstanceQuery, limit: int) -> list[InstanceRecord]:
        return listing.find_instances(self, query, limit)

    def step_overview(self, instance_id: int, first_items: int, failed_items: int) -> StepOverview:
        return listing.step_overview(self, instance_id, first_items, failed_items)

    def record_audit(
        self,
        actor: str,
        action: str,
        *,
        batch: str | None = None,
        instance_id: int | None = None,
        detail: str | None = None,
    ) -> AuditRecord:
        return listing.record_audit(
            self, actor, action, batch=batch, instance_id=instance_id, detail=detail
        )

    def audit(
        self, *, instance_id: int | None = None, batch: str | None = None, limit: int = 200
    ) -> list[AuditRecord]:
        return listing.audit(self, instance_id=instance_id, batch=batch, limit=limit)

    def step_results(self, instance_id: int) -> list[StepResultRecord]:
        query = sa.select(R).where(R.c.batch_instance_id == instance_id).order_by(R.c.id)
        with self._read() as conn:
            return [listing.step_record(r) for r in conn.execute(query).all()]

    def step_states(self, instance_id: int) -> list[StepState]:
        query = (
            sa.select(
                R.c.id,
                R.c.step_key,
                R.c.map_index,
                R.c.status,
                R.c.attempt,
                R.c.started_at,
                R.c.finished_at,
            )
            .where(R.c.batch_instance_id == instance_id)
            .order_by(R.c.id)
        )
        with self._read() as conn:
            return [
                StepState(r[0], r[1], r[2], StepStatus(r[3]), r[4], r[5], r[6])
                for r in conn.execute(query)
            ]

    def kept_attempts(self, row_ids: Sequence[int]) -> list[KeptAttempt]:
        a = batch_step_attempt
        found: list[KeptAttempt] = []
        with self._read() as conn:
            for chunk in iter_chunks(list(row_ids), CHUNK):
                query = (
                    sa.select(a.c.step_result_id, a.c.attempt, a.c.started_at, a.c.finished_at)
                    .where(a.c.step_result_id.in_(chunk))
                    .order_by(a.c.step_result_id, a.c.attempt)
                )
                found.extend(KeptAttempt(*r) for r in conn.execute(query))
        return found

    def attempts(self, instance_id: int) -> list[AttemptRecord]:
        a = batch_step_attempt
        query = (
            sa.select(R.c.step_key, R.c.map_index, a)
            .join(R, R.c.id == a.c.step_result_id)
            .where(R.c.batch_instance_id == instance_id)
            .order_by(R.c.id, a.c.attempt)
        )
        with self._read() as conn:
            return [
                AttemptRecord(
                    r.step_key,
                    r.map_index,
                    r.attempt,
                    StepStatus(r.status),
                    r.error,
                    r.started_at,
                    r.finished_at,
                )
                for r in conn.execute(query).all()
            ]

    def results_for(self, instance_id: int, keys: Iterable[str]) -> dict[str, Any]:
        with self._read() as conn:
            return load_results(conn, instance_id, keys)

    def statuses_for(self, instance_id: int, keys: Iterable[str]) -> dict[str, StepStatus]:
        out: dict[str, StepStatus] = {}
        with self._read() as conn:
            for chunk in iter_chunks(list(keys), CHUNK):
                query = sa.select(R.c.step_key, R.c.status).where(
                    R.c.batch_instance_id == instance_id,
                    R.c.step_key.in_(chunk),
                    R.c.map_index == -1,  # a mapped step's own row holds the step's status
                )
                out.update({key: StepStatus(status) for key, status in conn.execute(query)})
        return out

    # -- leases ---------------------------------------------------------------------------

    def heartbeat(self, owner: str, ttl_seconds: float) -> None:
        w = stepline_worker
        with self._write() as conn:
            expires = db_now(conn) + timedelta(seconds=ttl_seconds)
            updated = conn.execute(
                sa.update(w).where(w.c.id == owner).values(expires_at=expires)
            ).rowcount
            if not updated:
                host, pid = owner.split(":")[0], os.getpid()
                conn.execute(
                    sa.insert(w).values(
                        id=owner,
                        hostname=host[:255],
                        pid=pid,
                        started_at=utcnow(),
                        expires_at=expires,
                    )
                )

    def release(self, owner: str) -> None:
        with self._write() as conn:
            conn.execute(sa.delete(stepline_worker).where(stepline_worker.c.id == owner))

    def acquire_lease(self, name: str, holder: str, ttl_seconds: float) -> int | None:
        lease = stepline_lease
        try:
            with self._write() as conn:
                now = db_now(conn)
                expires = now + timedelta(seconds=ttl_seconds)
                row = _lease_row(conn, name)
                if row is None:
                    conn.execute(
                        sa.insert(lease).values(
                            name=name, holder=holder, epoch=1, expires_at=expires
                        )
                    )
                    return 1
                if row.holder == holder and row.expires_at > now:
                    conn.execute(
                        sa.update(lease).where(lease.c.name == name).values(expires_at=expires)
                    )
                    return int(row.epoch)
                if row.expires_at > now:
                    return None
                conn.execute(
                    sa.update(lease)
                    .where(lease.c.name == name, lease.c.epoch == row.epoch)
                    .values(holder=holder, epoch=row.epoch + 1, expires_at=expires)
                )
                return int(row.epoch) + 1
        except sa.exc.IntegrityError:
            return None  # another process created the lease row first

    def lease_valid(self, name: str, holder: str, epoch: int) -> bool:
        with self._read() as conn:
            row = conn.execute(
                sa.select(stepline_lease).where(stepline_lease.c.name == name)
            ).first()
            return bool(
                row is not None
                and row.holder == holder
                and row.epoch == epoch
                and row.expires_at > db_now(conn)
            )

    def release_lease(self, name: str, holder: str) -> None:
        lease = stepline_lease
        with self._write() as conn:
            conn.execute(
                sa.update(lease)
                .where(lease.c.name == name, lease.c.holder == holder)
                .values(expires_at=db_now(conn) - timedelta(seconds=1))
            )

    def last_scheduled(self, definition_id: int) -> datetime | None:
        with self._read() as conn:
            value: datetime | None = conn.execute(
                sa.select(sa.func.max(batch_fire_time.c.scheduled_for)).where(
                    batch_fire_time.c.definition_id == definition_id
                )
            ).scalar()
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def claim_alerts(
        self, holder: str, claim_seconds: float, *, instance_id: int | None = None
    ) -> list[PendingAlert]:
        a = stepline_alert_outbox
        claimed: list[PendingAlert] = []
        with self._write() as conn:
            now = db_now(conn)
            query = (
                sa.select(a.c.id, a.c.batch_instance_id, a.c.alert_index, a.c.attempts)
                .where(a.c.status == "pending", a.c.available_at <= now)
                .order_by(a.c.id)
                .limit(100)
            )
            if instance_id is not None:
                query = query.where(a.c.batch_instance_id == instance_id)
            for row in conn.execute(query).all():
                taken = conn.execute(
                    sa.update(a)
                    .where(a.c.id == row.id, a.c.status == "pending", a.c.available_at <= now)
                    .values(
                        claimed_by=holder,
                        attempts=row.attempts + 1,
                        available_at=now + timedelta(seconds=claim_seconds),
                    )
                ).rowcount
                if taken:
                    claimed.append(
                        PendingAlert(
                            row.id, row.batch_instance_id, row.alert_index, row.attempts + 1
                        )
                    )
        return claimed

    def alert_done(self, alert: PendingAlert, holder: str, error: str | None) -> None:
        a = stepline_alert_outbox
        with self._write() as conn:
            now = db_now(conn)
            if error is None:
                values: dict[str, Any] = {"status": "sent", "sent_at": now, "last_error": None}
            elif alert.attempts >= ALERT_ATTEMPTS:
                values = {"status": "abandoned", "last_error": error}
            else:
                delay = min(30.0 * 2 ** (alert.attempts - 1), 3600.0)
                values = {"available_at": now + timedelta(seconds=delay), "last_error": error}
            conn.execute(
                sa.update(a).where(a.c.id == alert.id, a.c.claimed_by == holder).values(**values)
            )

    def workers(self) -> list[tuple[str, str, int, bool]]:
        w = stepline_worker
        with self._read() as conn:
            now = db_now(conn)
            return [
                (r.id, r.hostname, r.pid, r.expires_at > now)
                for r in conn.execute(sa.select(w).order_by(w.c.id))
            ]

    def orphaned_instances(self, dead: Iterable[str] = ()) -> list[tuple[int, str | None]]:
        w = stepline_worker
        live = sa.select(w.c.id).where(w.c.expires_at > sa.bindparam("now", type_=UtcDateTime()))
        dead = list(dead)
        if dead:
            live = live.where(not_in_chunks(w.c.id, dead))
        query = (
            sa.select(BI.c.id, BI.c.owner_id)
            .where(
                BI.c.status.in_([InstanceStatus.QUEUED.value, InstanceStatus.RUNNING.value]),
                # A queued instance nobody owns yet waits for admission; it is not orphaned.
                sa.or_(
                    sa.and_(BI.c.owner_id.is_not(None), BI.c.owner_id.not_in(live)),
                    sa.and_(BI.c.owner_id.is_(None), BI.c.status == InstanceStatus.RUNNING.value),
                ),
            )
            .order_by(BI.c.id)
        )
        with self._read() as conn:
            return [(r.id, r.owner_id) for r in conn.execute(query, {"now": db_now(conn)})]


def _discard(conn: Connection) -> None:
    """Close a connection for good: never back into the pool."""
    with contextlib.suppress(Exception):
        conn.invalidate()
    with contextlib.suppress(Exception):
        conn.close()


class _PinnedTransaction(AbstractContextManager[InstanceTransaction]):
    """One instance transaction on the connection the store keeps checked out.

    A transaction through the pool costs a checkout, SQLAlchemy's begin and commit
    bookkeeping and a checkin: more than SQLite's own work for a step. The per-step path
    instead begins and commits on the driver. A Core statement in the same transaction (a
    rarer path) makes SQLAlchemy join it (the SQLite ``begin`` hook sees the driver's open
    transaction), and then SQLAlchemy commits it. Whatever fails, the transaction is rolled
    back, and a connection in doubt (any database error) is dropped, not reused.

    Made by ``instance_transaction`` holding the store's pin lock; releases it on exit.
    """

    __slots__ = ("_conn", "_id", "_known", "_store")

    def __init__(self, store: SqlAlchemyStore, instance_id: int, known: InstanceRecord) -> None:
        self._store, self._id, self._known = store, instance_id, known
        self._conn: Connection | None = None

    def __enter__(self) -> InstanceTransaction:
        store = self._store
        write_locked = False
        try:
            if store._write_lock is not None:
                store._write_lock.acquire()
                write_locked = True
            conn = self._conn = store._pinned_connection()
            if store.dialect == "sqlite":
                conn.connection.driver_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
            instance = store._locked(conn, self._id, self._known)
            return SqlInstanceTransaction(conn, instance, store._item_cursors, store._step_rows)
        except BaseException as exc:
            try:
                if self._conn is not None:
                    store._unpin(self._conn, exc)
            finally:
                self._release(write_locked=write_locked)
            store._raise_translated(exc)
            raise

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        store, conn = self._store, self._conn
        assert conn is not None
        try:
            if error is not None:
                store._unpin(conn, error)
            else:
                try:
                    if conn.in_transaction():
                        conn.commit()
                    else:
                        conn.connection.driver_connection.commit()  # type: ignore[union-attr]
                except BaseException as exc:
                    store._unpin(conn, exc)
                    store._raise_translated(exc)
                    raise
        finally:
            self._release()
        if error is not None:
            store._raise_translated(error)

    def _release(self, *, write_locked: bool = True) -> None:
        store = self._store
        store._pinned_used = time.monotonic()
        if store._write_lock is not None and write_locked:
            store._write_lock.release()
        assert store._pin_lock is not None
        store._pin_lock.release()


_ID_MIN, _ID_MAX = -(2**63), 2**63 - 1


def _no_instance(instance_id: int) -> NotFound:
    return NotFound(
        f"instance {instance_id} does not exist", hint="`stepline instances` lists them"
    )


_INSTANCE = sa.select(BI).where(BI.c.id == sa.bindparam("id"))
"""Built once: building a statement and its cache key costs more than running it."""

_MINE = "(owner_id IS NULL OR (owner_id = :owner AND started_at = :now))"
"""A row a pickup may take: one nobody has, or one this very pickup took already (its commit
went unconfirmed, and the same pickup, with the same ``now``, is made again)."""
_PICKUP_SQL = (
    "UPDATE batch_step_result SET owner_id = :owner, started_at = :now"
    f" WHERE id = :id AND attempt = :attempt AND status = 'running' AND {_MINE}"
)
_PICKUP = HotStatement(_PICKUP_SQL, times=["now"])
_PICKUP_RETURNING = HotStatement(
    _PICKUP_SQL + " RETURNING batch_instance_id, step_key, map_index, first_attempt", times=["now"]
)
_PICKED_COLUMNS = "id, batch_instance_id, step_key, map_index, first_attempt"
_FREE_ROWS = f" WHERE id IN :ids AND attempt = :attempt AND status = 'running' AND {_MINE}"
_PICKUP_MANY_SQL = "UPDATE batch_step_result SET owner_id = :owner, started_at = :now" + _FREE_ROWS
_PICKUP_MANY = HotStatement(_PICKUP_MANY_SQL, times=["now"])
_FREE = HotStatement(
    f"SELECT {_PICKED_COLUMNS} FROM batch_step_result{_FREE_ROWS} FOR UPDATE", times=["now"]
)
# Rows the pickup of ``picked`` took, still held, or already given back by this hand-back
# (made again after a commit that went unconfirmed).
_HELD_ROWS = (
    " WHERE id IN :ids AND attempt = :attempt AND status = 'running' AND started_at = :picked"
    " AND (owner_id = :owner OR owner_id IS NULL)"
)
_HAND_BACK_SQL = "UPDATE batch_step_result SET owner_id = NULL" + _HELD_ROWS
_HAND_BACK = HotStatement(_HAND_BACK_SQL, times=["picked"])
_HELD = HotStatement(f"SELECT id FROM batch_step_result{_HELD_ROWS} FOR UPDATE", times=["picked"])
_PICKUP_MANY_RETURNING = HotStatement(
    f"{_PICKUP_MANY_SQL} RETURNING {_PICKED_COLUMNS}", times=["now"]
)
_HAND_BACK_RETURNING = HotStatement(f"{_HAND_BACK_SQL} RETURNING id", times=["picked"])
_PICKED = HotStatement(
    "SELECT batch_instance_id, step_key, map_index, first_attempt FROM batch_step_result"
    " WHERE id = :id"
)


def _lease_row(conn: Connection, name: str) -> Row[Any] | None:
    return conn.execute(
        sa.select(stepline_lease).where(stepline_lease.c.name == name).with_for_update()
    ).first()


def _unavailable(store: SqlAlchemyStore, exc: sa.exc.OperationalError) -> StoreUnavailable:
    return StoreUnavailable(f"database {store.shown_url} is unavailable: {exc.orig}")
