"""Alembic migrations for Stepline's own tables, run by ``stepline db upgrade``.

Stepline records its revision in a version table of its own, ``stepline_alembic_version``,
so that it can share a database with an application that uses Alembic itself (and keeps
its revision in the default ``alembic_version``). Releases before that kept Stepline's
revision in ``alembic_version``; such a database is taken over on the first upgrade.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

_HERE = Path(__file__).parent
_LOCK_ID = 7_372_150_301  # arbitrary, fixed: serialises concurrent upgrades on PostgreSQL
VERSION_TABLE = "stepline_alembic_version"
_LEGACY_VERSION_TABLE = "alembic_version"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE}
    ).get_current_revision()


def _adopt_legacy_revision(connection: Connection) -> None:
    """Move Stepline's revision out of ``alembic_version``, where releases before 0.2 kept it.

    Only a revision of Stepline's own (one of its scripts) is moved, and only when Stepline's
    tables exist; any other row is the application's and stays. The table is dropped once
    empty (Stepline created it then).
    """
    inspector = sa.inspect(connection)
    if inspector.has_table(VERSION_TABLE) or not inspector.has_table(_LEGACY_VERSION_TABLE):
        return
    if not inspector.has_table("batch_definition"):
        return
    legacy = sa.table(_LEGACY_VERSION_TABLE, sa.column("version_num", sa.String(32)))
    ours = {
        script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()
    }
    found = [row for row in connection.execute(sa.select(legacy.c.version_num)).scalars()]
    mine = [revision for revision in found if revision in ours]
    if len(mine) != 1:
        return
    MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).stamp(
        ScriptDirectory.from_config(alembic_config()), mine[0]
    )
    connection.execute(sa.delete(legacy).where(legacy.c.version_num == mine[0]))
    if len(found) == 1:
        connection.execute(sa.text(f"DROP TABLE {_LEGACY_VERSION_TABLE}"))


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
            _adopt_legacy_revision(conn)
            if current_revision(conn) != head:
                command.upgrade(alembic_config(conn), "head")
        finally:
            if engine.dialect.name in ("mysql", "mariadb"):
                conn.exec_driver_sql("SELECT RELEASE_LOCK('stepline_migrate')")
