"""Fault injection at the database driver: real driver errors at chosen statements.

The store's engine gets driver connections of our own subclasses (SQLAlchemy's
``do_connect`` event), whose cursors count every statement and commit. At a planned count
they fail the way a database does: the connection killed for real (PostgreSQL's
``pg_terminate_backend``, MariaDB's ``KILL``), or the driver's own exception for a
deadlock, a serialization failure or a statement timeout, or a commit that happened but
whose answer was lost. Nothing in Stepline is patched: it sees what a real outage shows.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import psycopg
import pymysql
import pymysql.cursors
import sqlalchemy as sa
from sqlalchemy import event

KINDS = ("kill", "deadlock", "timeout", "lost_commit")


class Faults:
    """Counts statements (and commits) while armed; fails the planned ones."""

    def __init__(self) -> None:
        self.count = 0
        self.plan: dict[int, str] = {}
        self.injected: list[tuple[int, str, str]] = []
        self.armed = False
        self._lock = threading.Lock()

    def arm(self, plan: dict[int, str]) -> None:
        with self._lock:
            self.count, self.plan, self.armed = 0, dict(plan), True

    def disarm(self) -> int:
        with self._lock:
            self.armed = False
            return self.count

    def next(self, what: str) -> str | None:
        """The fault planned for this statement (``what``: 'execute' or 'commit'), if any."""
        with self._lock:
            if not self.armed:
                return None
            self.count += 1
            kind = self.plan.pop(self.count, None)
            if kind == "lost_commit" and what != "commit":
                self.plan[self.count + 1] = kind  # a commit's fault waits for the commit
                return None
            if kind is not None:
                self.injected.append((self.count, kind, what))
            return kind


def install(engine: sa.Engine, faults: Faults) -> None:
    """Make every new connection of ``engine`` a fault-injecting one."""
    backend = engine.dialect.name

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        if backend == "postgresql":
            conn = _PgConnection.connect(*cargs, **cparams)
            conn.cursor_factory = _PgCursor
        elif backend in ("mysql", "mariadb"):
            conn = _MyConnection(*cargs, cursorclass=_MyCursor, **cparams)
        else:
            conn = sqlite3.connect(*cargs, factory=_SqliteConnection, **cparams)
        conn.faults = faults  # type: ignore[attr-defined]
        return conn


# -- PostgreSQL -----------------------------------------------------------------------------


def _pg_fail(conn: Any, kind: str) -> None:
    if kind == "kill":
        with psycopg.Cursor(conn) as cursor:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        raise AssertionError("the backend survived pg_terminate_backend")
    if kind == "deadlock":
        raise psycopg.errors.DeadlockDetected("deadlock detected (injected)")
    if kind == "timeout":
        raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
    raise psycopg.OperationalError("server closed the connection unexpectedly (injected)")


class _PgConnection(psycopg.Connection[Any]):
    faults: Faults

    def commit(self) -> None:
        kind = self.faults.next("commit")
        if kind == "lost_commit":
            super().commit()
            raise psycopg.OperationalError("server closed the connection unexpectedly (lost)")
        if kind is not None:
            _pg_fail(self, kind)
        super().commit()


class _PgCursor(psycopg.Cursor[Any]):
    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        kind = self.connection.faults.next("execute")  # type: ignore[attr-defined]
        if kind is not None:
            _pg_fail(self.connection, kind)
        return super().execute(query, params, **kwargs)

    def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
        kind = self.connection.faults.next("execute")  # type: ignore[attr-defined]
        if kind is not None:
            _pg_fail(self.connection, kind)
        super().executemany(query, params_seq, **kwargs)


# -- MariaDB --------------------------------------------------------------------------------


def _my_fail(conn: Any, kind: str) -> None:
    if kind == "kill":
        with pymysql.cursors.Cursor(conn) as cursor:
            cursor.execute("SELECT CONNECTION_ID()")
            (thread,) = cursor.fetchone()
            cursor.execute(f"KILL {int(thread)}")
        raise AssertionError("the connection survived KILL")
    if kind == "deadlock":
        raise pymysql.err.OperationalError(
            1213, "Deadlock found when trying to get lock; try restarting transaction"
        )
    if kind == "timeout":
        raise pymysql.err.OperationalError(1205, "Lock wait timeout exceeded (injected)")
    raise pymysql.err.OperationalError(2013, "Lost connection to server during query")


class _MyConnection(pymysql.connections.Connection):  # type: ignore[misc]
    faults: Faults

    def commit(self) -> None:
        kind = self.faults.next("commit")
        if kind == "lost_commit":
            super().commit()
            raise pymysql.err.OperationalError(2013, "Lost connection to server (lost commit)")
        if kind is not None:
            _my_fail(self, kind)
        super().commit()


class _MyCursor(pymysql.cursors.Cursor):  # type: ignore[misc]
    def execute(self, query: Any, args: Any = None) -> Any:
        kind = self.connection.faults.next("execute")
        if kind is not None:
            _my_fail(self.connection, kind)
        return super().execute(query, args)

    def executemany(self, query: Any, args: Any) -> Any:
        kind = self.connection.faults.next("execute")
        if kind is not None:
            _my_fail(self.connection, kind)
        return super().executemany(query, args)


# -- SQLite ---------------------------------------------------------------------------------


def _sqlite_fail(kind: str) -> None:
    # A file database has no connection to kill: a busy or failing disk is what it shows.
    message = {
        "kill": "disk I/O error (injected)",
        "deadlock": "database is locked (injected)",
        "timeout": "database is locked (injected busy timeout)",
    }.get(kind, "disk I/O error after commit (injected)")
    raise sqlite3.OperationalError(message)


class _SqliteCursor(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        kind = self.connection.faults.next("execute")  # type: ignore[attr-defined]
        if kind is not None:
            _sqlite_fail(kind)
        return super().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> sqlite3.Cursor:
        kind = self.connection.faults.next("execute")  # type: ignore[attr-defined]
        if kind is not None:
            _sqlite_fail(kind)
        return super().executemany(sql, seq_of_parameters)


class _SqliteConnection(sqlite3.Connection):
    faults: Faults

    def cursor(self, factory: Any = _SqliteCursor) -> Any:  # type: ignore[override]
        return super().cursor(factory)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return self.cursor().execute(sql, parameters)

    def commit(self) -> None:
        kind = self.faults.next("commit")
        if kind == "lost_commit":
            super().commit()
            _sqlite_fail(kind)
        if kind is not None:
            _sqlite_fail(kind)
        super().commit()
