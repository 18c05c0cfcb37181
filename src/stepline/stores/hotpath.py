"""The few statements run once per step, executed on the driver's cursor.

SQLAlchemy's per-execute work (parameter processing, result setup) costs several times
what SQLite spends on these statements, so the per-step path binds plain values itself.
Oracle keeps SQLAlchemy's typed path (:meth:`HotStatement.oracle_clause`): its CLOB and
TIMESTAMP binds need the dialect's handling.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from stepline.stores.schema import JsonDocument, UtcDateTime

_NAMED = re.compile(r":(\w+)")
_LISTED = re.compile(r"\bIN :(\w+)")
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's own storage format for SQLite


class HotStatement:
    """One SQL statement with ``:name`` parameters; ``:name`` of a list expands to ``IN``."""

    def __init__(self, sql: str, *, json: Sequence[str] = (), times: Sequence[str] = ()) -> None:
        self.sql = sql
        self.json = frozenset(json)
        self.times = frozenset(times)
        self.lists = tuple(dict.fromkeys(_LISTED.findall(sql)))
        """Parameters that take a list (``IN :ids``), expanded to one bind per element."""
        self._plain = {True: sql, False: _pyformat(sql)}  # by "is SQLite"
        self._expanded: dict[tuple[tuple[str, int], ...], str] = {}
        self._positional: dict[tuple[int, ...], tuple[str, tuple[str, ...]]] = {}
        """SQLite's text by list lengths, every parameter a ``?``, and the parameter each
        ``?`` (or run of them, for a list) takes, in order."""
        self._arrays = _pyformat(_LISTED.sub(r"= ANY(:\1)", sql))
        """PostgreSQL's text: a list is one array parameter (``= ANY(%(ids)s)``), so a
        list of any length is one statement, parsed and planned once."""
        self._single = _pyformat(_LISTED.sub(r"= :\1", sql))
        """PostgreSQL's text when every list has one element (one step's id, one upstream
        step's result): ``= %(keys)s`` is a seek on an index with that column, where
        PostgreSQL may take ``= ANY(...)`` as a filter on the rows the other conditions
        find (every row of the instance)."""

    def run(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Execute on ``conn``'s transaction; returns a DBAPI cursor (rowcount, fetchall)."""
        dialect = conn.dialect.name
        if dialect == "oracle":
            return self._run_typed(conn, params)
        return self.run_on(
            driver_cursor(conn), dialect == "sqlite", params, arrays=dialect == "postgresql"
        )

    def run_on(
        self, cursor: Any, sqlite: bool, params: Mapping[str, Any], *, arrays: bool = False
    ) -> Any:
        """:meth:`run` on the cursor ``driver_cursor`` gave for the connection (a transaction
        keeps it), not Oracle; returns the cursor. ``arrays`` (PostgreSQL): lists are sent
        as arrays instead of one bind per element."""
        if sqlite and self.lists:
            return self._run_positional(cursor, params)
        sql = self._plain[sqlite]
        values = params
        if self.lists or self.times:
            values = dict(params)
            shape: list[tuple[str, int]] = []
            single = True
            for name in self.lists:
                listed = values.pop(name)
                if arrays:
                    values[name] = list(listed)
                    single = single and len(listed) == 1
                    continue
                shape.append((name, len(listed)))
                values.update(zip(_names(name, len(listed)), listed, strict=True))
            if arrays and self.lists:
                sql = self._arrays
                if single:
                    sql = self._single
                    for name in self.lists:
                        values[name] = values[name][0]
            elif shape:
                sql = self._sql(shape)
            for name in self.times:
                value = values.get(name)
                if value is not None:
                    values[name] = _sqlite_time(value) if sqlite else _naive_utc(value)
        cursor.execute(sql, values)
        return cursor

    def _sql(self, shape: list[tuple[str, int]]) -> str:
        """The text for lists of these lengths (``IN (%(ids_0)s, %(ids_1)s)``), made once;
        MariaDB (PyMySQL), and PostgreSQL when arrays are off."""
        key = tuple(shape)
        sql = self._expanded.get(key)
        if sql is None:
            sql = self.sql
            for name, count in shape:
                listed = ", ".join(f":{n}" for n in _names(name, count))
                sql = re.sub(rf":{name}\b", f"({listed})", sql)
            sql = _pyformat(sql)
            if len(self._expanded) < 1024:
                self._expanded[key] = sql
        return sql

    def _run_positional(self, cursor: Any, params: Mapping[str, Any]) -> Any:
        """SQLite with lists: every parameter a ``?``, bound in order.

        SQLite looks each ``:name`` up in a list of the names seen so far while it parses
        a statement, so a list of 500 named binds costs about 125,000 name comparisons:
        2.4 ms to prepare against 0.4 ms as ``?``. A list's length makes a new text (a new
        preparation), so every first instance of a process, and every new width of a
        fan-out, paid it several times."""
        lists = self.lists
        shape = tuple(len(params[name]) for name in lists)
        made = self._positional.get(shape)
        if made is None:
            made = self._make_positional(dict(zip(lists, shape, strict=True)))
            if len(self._positional) < 1024:
                self._positional[shape] = made
        sql, order = made
        values: list[Any] = []
        for name in order:
            value = params[name]
            if name in lists:
                values.extend(value)
            elif value is not None and name in self.times:
                values.append(_sqlite_time(value))
            else:
                values.append(value)
        cursor.execute(sql, values)
        return cursor

    def _make_positional(self, counts: dict[str, int]) -> tuple[str, tuple[str, ...]]:
        order: list[str] = []

        def mark(found: re.Match[str]) -> str:
            name = found.group(1)
            order.append(name)
            count = counts.get(name)
            return "?" if count is None else f"({', '.join('?' * count)})"

        return _NAMED.sub(mark, self.sql), tuple(order)

    def run_many(
        self, conn: Connection, rows: Sequence[Mapping[str, Any]], *, returning: bool = False
    ) -> Any:
        """Execute once per row with the driver's ``executemany`` (psycopg pipelines it,
        PyMySQL folds an INSERT into multi-row VALUES); no list parameters here.

        ``returning`` (psycopg only) keeps each row's result set: read one, then
        ``nextset()``. Returns the DBAPI cursor."""
        dialect = conn.dialect.name
        if dialect == "oracle":
            return conn.execute(self.oracle_clause(rows[0]), list(rows)).cursor
        sqlite = dialect == "sqlite"
        if self.times:
            convert = _sqlite_time if sqlite else _naive_utc
            rows = [
                {k: convert(v) if k in self.times and v is not None else v for k, v in row.items()}
                for row in rows
            ]
        sql = self._plain[sqlite]
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        if returning:
            cursor.executemany(sql, rows, returning=True)
        else:
            cursor.executemany(sql, rows)
        return cursor

    def _run_typed(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        return conn.execute(self.oracle_clause(params), dict(params)).cursor

    def oracle_clause(self, params: Mapping[str, Any]) -> sa.TextClause:
        """The statement as Oracle runs it: typed binds (CLOB JSON, TIMESTAMP), an expanding
        bind per list (``IN (:keys_1, ...)``, callers keep lists under 1,000 entries) and
        ``FETCH FIRST n ROWS ONLY`` for ``LIMIT``."""
        binds: list[sa.BindParameter[Any]] = []
        for name, value in params.items():
            if isinstance(value, list | tuple):
                binds.append(sa.bindparam(name, expanding=True))
            elif name in self.json:
                binds.append(sa.bindparam(name, type_=JsonDocument))
            elif name in self.times:
                binds.append(sa.bindparam(name, type_=UtcDateTime()))
        sql = self.sql.replace(" LIMIT :limit", " FETCH FIRST :limit ROWS ONLY")
        return sa.text(sql).bindparams(*binds)


@functools.lru_cache(maxsize=512)
def _pyformat(sql: str) -> str:
    """``:name`` as ``%(name)s`` (psycopg, PyMySQL); once per statement shape, not per call."""
    return _NAMED.sub(r"%(\1)s", sql)


def driver_cursor(conn: Connection) -> Any:
    """The driver cursor the hot statements of ``conn``'s DBAPI connection share.

    Made once per connection (psycopg builds a cursor in Python, at a cost near that of a
    statement); each caller reads its rows before the next statement runs. The pool's
    DBAPI connection is the driver's own for every synchronous driver."""
    proxied = conn.connection
    driver = proxied.dbapi_connection
    held = proxied.info.get("stepline_cursor")
    if held is None or held[0] is not driver:
        held = proxied.info["stepline_cursor"] = (driver, driver.cursor())  # type: ignore[union-attr]
    return held[1]


@functools.lru_cache(maxsize=64)
def _names(name: str, count: int) -> tuple[str, ...]:
    return tuple(f"{name}_{i}" for i in range(count))


def _naive_utc(value: datetime) -> datetime:
    """An aware time as the naive UTC time the columns hold (a naive one is local time)."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None)


def _sqlite_time(value: datetime) -> str:
    """SQLAlchemy's SQLite storage format (``%Y-%m-%d %H:%M:%S.%f``) of the UTC time.

    Two-digit fields from a table, and the year and microseconds as ``str`` of an int
    with a leading 1 cut off: isoformat, strftime and format specs (``:06d``) go through
    printf-style formatting, which costs more than the statement's own binding (three
    times per step)."""
    v = value if value.tzinfo is UTC else value.astimezone(UTC)
    d = _TWO_DIGITS
    return (
        f"{str(10000 + v.year)[1:]}-{d[v.month]}-{d[v.day]} {d[v.hour]}:{d[v.minute]}"
        f":{d[v.second]}.{str(1000000 + v.microsecond)[1:]}"
    )


_TWO_DIGITS = [f"{i:02d}" for i in range(100)]
