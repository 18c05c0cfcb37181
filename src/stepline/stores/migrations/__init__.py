"""Alembic migrations for Stepline's own tables, run by ``stepline db upgrade``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:
    from alembic.config import Config

_HERE = Path(__file__).parent
_LOCK_ID = 7_372_150_301  # arbitrary, fixed: serialises concurrent upgrades on PostgreSQL


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

    return MigrationContext.configure(connection).get_current_revision()


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
    from alembic import command

    head = head_revision()
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
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    return str(rows[0][0]) if len(rows) == 1 else None
