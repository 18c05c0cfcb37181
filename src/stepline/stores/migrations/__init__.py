"""Alembic migrations for Stepline's own tables, run by ``stepline db upgrade``.

Stepline records its revision in a version table of its own, ``stepline_alembic_version``,
so that it can share a database with an application that uses Alembic itself (and keeps
its revision in the default ``alembic_version``). Releases before that kept Stepline's
revision in ``alembic_version``; such a database is taken over on the first upgrade.

A database without any of Stepline's tables is not migrated step by step: its tables are
created from the declared schema and stamped at the head revision, which yields the same
schema (tests/integration/test_migrations.py compares the two on every tested database)
without importing Alembic, a third of a second of a first ``stepline run``. A database that
has Stepline's tables always goes through Alembic's migrations.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:
    from alembic.config import Config

_HERE = Path(__file__).parent
_LOCK_ID = 7_372_150_301  # arbitrary, fixed: serialises concurrent upgrades on PostgreSQL
VERSION_TABLE = "stepline_alembic_version"
_LEGACY_VERSION_TABLE = "alembic_version"
# Where a new database's tables are created from the declared schema (the tested ones);
# elsewhere (Oracle) Alembic creates them.
_CREATED_AT_HEAD = ("sqlite", "postgresql", "mysql", "mariadb")


def version_table() -> sa.Table:
    """Stepline's Alembic version table, declared as Alembic declares it (its
    ``DefaultImpl.version_table_impl``): a test checks that the two agree."""
    return sa.Table(
        VERSION_TABLE,
        sa.MetaData(),
        sa.Column("version_num", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
    )


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE}
    ).get_current_revision()


def _adopt_legacy_revision(connection: Connection) -> None:
    """Move Stepline's revision out of ``alembic_version``, where releases before 0.2 kept it.

    Only a revision of Stepline's own (one of its scripts) is moved, and only when Stepline's
    tables exist; any other row is the application's and stays. The table is dropped once
    empty (Stepline created it then).
    """
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

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
    """Whether the database is at the head revision (one short read). Every command opens
    the store and asks: the head is read from the version files, without importing Alembic."""
    declared = declared_head()
    if declared is not None:
        return _stored_revision(engine) == declared
    with engine.connect() as conn:
        return current_revision(conn) == head_revision()


def upgrade(engine: Engine) -> None:
    """Migrate to head; cheap when already there, and safe when processes race to do it."""
    if is_current(engine):
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_ID})")
        elif engine.dialect.name in ("mysql", "mariadb"):
            conn.exec_driver_sql("SELECT GET_LOCK('stepline_migrate', 120)")
        try:
            if not _create_at_head(conn):
                _migrate(conn)
        finally:
            if engine.dialect.name in ("mysql", "mariadb"):
                conn.exec_driver_sql("SELECT RELEASE_LOCK('stepline_migrate')")


def _migrate(conn: Connection) -> None:
    from alembic import command

    _adopt_legacy_revision(conn)
    if current_revision(conn) != head_revision():
        command.upgrade(alembic_config(conn), "head")


def _create_at_head(conn: Connection) -> bool:
    """On a database without any of Stepline's tables, create them as declared and stamp
    the head revision; False (nothing done) on any other database."""
    from stepline.stores.schema import metadata

    head = declared_head()
    if head is None or conn.dialect.name not in _CREATED_AT_HEAD:
        return False
    existing = set(sa.inspect(conn).get_table_names())
    if existing & {VERSION_TABLE, *metadata.tables}:
        return False
    metadata.create_all(conn, checkfirst=False)
    version = version_table()
    version.create(conn, checkfirst=False)
    conn.execute(version.insert().values(version_num=head))
    return True


def offline_sql(dialect_name: str) -> str:
    """The DDL that ``upgrade`` would run, as an SQL script for ``dialect_name`` (no server).

    Alembic's offline mode: what a DBA reviews and applies by hand where Stepline may not
    create tables itself. On Oracle it is the 19c form (JSON in CLOB columns checked IS JSON);
    an online upgrade against 21c or later creates native JSON columns instead.
    """
    from alembic import command

    buffer = io.StringIO()
    config = alembic_config()
    config.set_main_option("dialect_name", dialect_name)
    config.attributes["output_buffer"] = buffer
    command.upgrade(config, "head", sql=True)
    script = buffer.getvalue()
    if dialect_name == "oracle":
        # SQLAlchemy's Oracle dialect adds RETURNING ... INTO :bind to the version insert; a
        # script run in SQL*Plus has no bind to return into. The insert must be committed.
        script = re.sub(r" RETURNING \w+\.version_num INTO :\w+", "", script)
        script += "COMMIT\n\n/\n"
    return script


ORACLE_SCRIPT_HEADER = """\
-- Stepline's tables for Oracle Database 19c and later (12.2 should work; untested).
-- Generated from the Alembic migrations (offline mode) by scripts/oracle-schema-sql;
-- a test fails when it drifts. Review it, then run it in SQL*Plus or SQLcl as the owner
-- of Stepline's tables. `stepline db upgrade` creates the same tables itself, with native
-- JSON columns on 21c and later; this file is the 19c form (CLOB checked IS JSON).
-- No Oracle server runs in Stepline's CI: this DDL has been compiled, not executed.

"""


def oracle_schema_script() -> str:
    """The reviewed ``docs/oracle/stepline-schema.sql``: a header and offline_sql("oracle")."""
    return ORACLE_SCRIPT_HEADER + offline_sql("oracle")


_REVISION = re.compile(r"^revision\s*=\s*[\"']([^\"']+)[\"']", re.M)
_DOWN = re.compile(r"^down_revision\s*=\s*(.*)$", re.M)
_QUOTED = re.compile(r"[\"']([^\"']+)[\"']")


def declared_head() -> str | None:
    """The head revision, read from the version files as text (Alembic's own answer,
    :func:`head_revision`, costs a third of a second of imports); None if not one head."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (_HERE / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        revision, down = _REVISION.search(text), _DOWN.search(text)
        if revision is None:
            return None
        revisions.add(revision.group(1))
        if down is not None:
            parents.update(_QUOTED.findall(down.group(1)))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _stored_revision(engine: Engine) -> str | None:
    """The database's revision, or None when it has no single one (or no table yet).

    A database that cannot be reached raises, as Alembic's own check would."""
    with engine.connect() as conn:
        conn = conn.execution_options(stepline_read=True)  # SQLite: a plain BEGIN
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return None
        rows = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").all()
    return str(rows[0][0]) if len(rows) == 1 else None
