"""Alembic migrations for Stepline's own tables, run by ``stepline db upgrade``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

_HERE = Path(__file__).parent
_LOCK_ID = 7_372_150_301  # arbitrary, fixed: serialises concurrent upgrades on PostgreSQL


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def is_current(engine: Engine) -> bool:
    """Whether the database is at the head revision (one short read)."""
    with engine.connect() as conn:
        return current_revision(conn) == head_revision()


def upgrade(engine: Engine) -> None:
    """Migrate to head; cheap when already there, and safe when processes race to do it."""
    head = head_revision()
    if is_current(engine):
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_ID})")
        elif engine.dialect.name in ("mysql", "mariadb"):
            conn.exec_driver_sql("SELECT GET_LOCK('stepline_migrate', 120)")
        try:
            if current_revision(conn) != head:
                command.upgrade(alembic_config(conn), "head")
        finally:
            if engine.dialect.name in ("mysql", "mariadb"):
                conn.exec_driver_sql("SELECT RELEASE_LOCK('stepline_migrate')")
