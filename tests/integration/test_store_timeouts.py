"""The store's timeouts on every database: a statement that waits too long fails with
StoreUnavailable instead of hanging its caller, and migrations are exempt (they may rewrite a
big table or wait for another process's migration)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from databases import create_database, drop_database
from stepline import batch, step
from stepline.errors import StoreUnavailable
from stepline.stores.migrations import _LOCK_ID
from stepline.stores.sqlalchemy import AnsweredWithin, SqlAlchemyStore, Timeouts

HELD = 4.0  # seconds another session holds the lock
SHORT = Timeouts(connect=5.0, statement=0.5)


def definition(version: int) -> object:
    return batch("locked", [step("a", "fixture_runners:work")], params={"v": version})


@contextmanager
def lock_held(url: str, seconds: float) -> Iterator[None]:
    """Another session holds batch_definition's row of "locked" for ``seconds``."""
    ready = threading.Event()

    def hold() -> None:
        if url.startswith("sqlite"):
            conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            ready.set()
            time.sleep(seconds)
            conn.execute("ROLLBACK")
            conn.close()
            return
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.begin() as conn:
            conn.execute(
                sa.text("SELECT id FROM batch_definition WHERE name = 'locked' FOR UPDATE")
            )
            ready.set()
            time.sleep(seconds)
        engine.dispose()

    holder = threading.Thread(target=hold)
    holder.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        holder.join()


def test_a_statement_waiting_on_a_lock_fails_after_the_statement_timeout(db_url: str) -> None:
    store = SqlAlchemyStore(db_url, timeouts=SHORT)
    try:
        store.initialize()
        store.apply(definition(1))  # type: ignore[arg-type]
        with lock_held(db_url, HELD):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="is unavailable"):
                store.apply(definition(2))  # type: ignore[arg-type]
            elapsed = time.monotonic() - started
        assert elapsed < HELD - 1, f"waited {elapsed:.1f} s, the lock's whole time"
        assert store.apply(definition(2)).version == 2  # type: ignore[arg-type]
    finally:
        store.dispose()


@pytest.fixture(params=["postgresql", "mariadb"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url, handle = create_database(request.param, tmp_path)
    yield url
    drop_database(request.param, handle)


def test_migrations_run_without_the_statement_timeout(fresh_url: str) -> None:
    """Another process migrating holds the migration lock for 2 s: with a 0.5 s statement
    timeout, the upgrade still waits for it and then finds nothing left to do."""
    engine = sa.create_engine(fresh_url, poolclass=sa.pool.NullPool)
    postgres = engine.dialect.name == "postgresql"
    take = (
        f"SELECT pg_advisory_lock({_LOCK_ID})"
        if postgres
        else "SELECT GET_LOCK('stepline_migrate', 10)"
    )
    release = (
        f"SELECT pg_advisory_unlock({_LOCK_ID})"
        if postgres
        else "SELECT RELEASE_LOCK('stepline_migrate')"
    )
    ready = threading.Event()

    def migrating_elsewhere() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text(take))
            ready.set()
            time.sleep(2.0)
            conn.execute(sa.text(release))

    other = threading.Thread(target=migrating_elsewhere)
    other.start()
    assert ready.wait(10)
    store = SqlAlchemyStore(fresh_url, timeouts=SHORT)
    try:
        started = time.monotonic()
        store.initialize()
        assert time.monotonic() - started > 1.0  # it did wait for the lock
        assert store.definitions() == []
    finally:
        other.join()
        store.dispose()
        engine.dispose()


class _Captured(Exception):
    """Raised in place of connecting, with the parameters the driver would have been given."""


def connect_parameters(url: str, timeouts: Timeouts) -> dict[str, object]:
    store = SqlAlchemyStore(url, timeouts=timeouts)

    @sa.event.listens_for(store.engine, "do_connect")
    def _capture(
        _dialect: object, _record: object, _args: object, params: dict[str, object]
    ) -> None:
        raise _Captured(dict(params))

    try:
        with pytest.raises(_Captured) as caught, store.engine.connect():
            pass
    finally:
        store.dispose()
    found: dict[str, object] = caught.value.args[0]
    return found


def test_postgresql_gives_up_on_a_silent_peer_in_about_twice_the_connect_timeout() -> None:
    """libpq's keepalives and TCP_USER_TIMEOUT come from the connect timeout; what the URL
    sets itself is kept (tests/acceptance/test_network_partition.py shows them at work)."""
    found = connect_parameters("postgresql://u@db.example/x", Timeouts(connect=4.0, statement=9))
    assert found["keepalives"] == 1
    assert (found["keepalives_idle"], found["keepalives_interval"]) == (4, 2)
    assert (found["keepalives_count"], found["tcp_user_timeout"]) == (3, 8000)
    assert found["options"] == "-c statement_timeout=9000"
    own = connect_parameters(
        "postgresql://u@db.example/x?keepalives_idle=60&tcp_user_timeout=0", Timeouts()
    )
    assert (own["keepalives_idle"], own["tcp_user_timeout"]) == ("60", "0")
    assert own["keepalives_count"] == 3


def test_postgresql_stops_waiting_for_an_answer_after_the_statement_and_connect_timeouts(
    tmp_path: Path,
) -> None:
    """Every connection of the store's engines waits at most statement + connect timeout
    for each answer (tests/acceptance/test_stalled_database.py shows it against a frozen
    server); the migrations' untimed connection has no limit."""
    url, handle = create_database("postgresql", tmp_path)
    try:
        store = SqlAlchemyStore(url, timeouts=Timeouts(connect=2.0, statement=3.0))
        with store.engine.connect() as conn:
            wait = vars(conn.connection.dbapi_connection)["wait"]
            assert isinstance(wait, AnsweredWithin) and wait.seconds == 5.0
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
        store.dispose()
        untimed = SqlAlchemyStore(url, timeouts=Timeouts(connect=2.0, statement=0.0))
        with untimed.engine.connect() as conn:
            assert "wait" not in vars(conn.connection.dbapi_connection)
        untimed.dispose()
    finally:
        drop_database("postgresql", handle)


def test_oracle_times_every_round_trip_and_probes_a_silent_peer() -> None:
    """No Oracle server runs here: the connect parameters and the engine's own connect hook
    are checked without one, and python-oracledb's call-timeout error is the real one."""
    from oracledb import errors

    url = "oracle://u:p@db.example:1521/?service_name=X"
    found = connect_parameters(url, Timeouts(connect=3.0, statement=7.5))
    assert (found["tcp_connect_timeout"], found["expire_time"]) == (3.0, 1)
    for statement, expected in ((7.5, 7500), (0.0, 0)):  # 0: migrations, no limit
        store = SqlAlchemyStore(url, timeouts=Timeouts(3.0, statement))
        (hook,) = [
            fn
            for fn in store.engine.pool.dispatch.connect
            if "_time_oracle_calls" in fn.__qualname__
        ]

        class Connection:
            call_timeout = 0

        conn = Connection()
        hook(conn, None)
        assert conn.call_timeout == expected
        store.dispose()
    timed_out = errors._create_err(errors.ERR_CALL_TIMEOUT_EXCEEDED, timeout=7500)
    store = SqlAlchemyStore(url)
    assert isinstance(store._translate(timed_out.exc_type(timed_out)), StoreUnavailable)
    assert isinstance(
        store._translate(sa.exc.DatabaseError("SELECT 1", None, timed_out.exc_type(timed_out))),
        StoreUnavailable,
    )
