"""Fresh databases for tests, on each backend, and the policy for a missing service.

A module of its own (not conftest.py) so any test folder can import it unambiguously.
A backend whose server is not reachable skips its tests with the reason locally, and fails
them when CI=true, so a CI run can never pass by skipping.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

SERVERS = {
    "postgresql": os.environ.get(
        "STEPLINE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432"
    ),
    "mariadb": os.environ.get("STEPLINE_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306"),
}
ALL_BACKENDS = ["sqlite", "postgresql", "mariadb"]


def require_service(name: str, reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is required in CI and is not available: {reason}")
    pytest.skip(f"{name} not available: {reason}")


def _admin(backend: str) -> sa.Engine:
    base = SERVERS[backend]
    url = f"{base}/postgres" if backend == "postgresql" else f"{base}/"
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def create_database(backend: str, tmp_path: Path) -> tuple[str, object]:
    """A fresh, empty database on ``backend``; returns (url, handle for drop_database)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'stepline.db'}", None
    name = f"stepline_t_{uuid.uuid4().hex[:12]}"
    engine = _admin(backend)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except sa.exc.OperationalError as exc:
        engine.dispose()
        require_service(backend, str(exc.orig).splitlines()[0])
    return f"{SERVERS[backend]}/{name}", (engine, name)


def drop_database(backend: str, handle: object) -> None:
    if handle is None:
        return
    engine, name = handle  # type: ignore[misc]
    with engine.connect() as conn:
        if backend == "postgresql":
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        else:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
    engine.dispose()
