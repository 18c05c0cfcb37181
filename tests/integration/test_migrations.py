"""`alembic upgrade head` yields exactly the tables the code declares, on every database."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from stepline.stores.migrations import current_revision, declared_head, head_revision
from stepline.stores.schema import metadata
from stepline.stores.sqlalchemy import SqlAlchemyStore


def _differences(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": False}
        )
        return list(compare_metadata(context, metadata))


def test_migrations_match_the_declared_schema(db_url: str) -> None:
    store = SqlAlchemyStore(db_url)
    try:
        store.initialize()
        with store.engine.connect() as conn:
            assert current_revision(conn) == head_revision()
        assert _differences(store.engine) == []
        store.initialize()  # a second upgrade is a no-op
    finally:
        store.dispose()


def test_the_head_read_from_the_files_is_alembics() -> None:
    """The start-up check reads the head without Alembic; it must agree with Alembic."""
    assert declared_head() == head_revision()


def test_a_store_at_an_older_revision_is_upgraded(tmp_path: Path) -> None:
    """The fast check only skips the upgrade at head: a database one revision behind is
    migrated when a store opens it."""
    url = f"sqlite:///{tmp_path}/old.db"
    engine = sa.create_engine(url)
    from alembic import command

    from stepline.stores.migrations import alembic_config

    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    engine.dispose()
    store = SqlAlchemyStore(url)
    try:
        store.initialize()
        with store.engine.connect() as conn:
            assert current_revision(conn) == head_revision() != "0001"
        assert _differences(store.engine) == []
    finally:
        store.dispose()


def test_the_oracle_ddl_compiles() -> None:
    """No Oracle server runs here; at least every table must compile for its dialect."""
    from sqlalchemy.dialects import oracle
    from sqlalchemy.schema import CreateTable

    dialect = oracle.dialect()
    for table in metadata.sorted_tables:
        ddl = str(CreateTable(table).compile(dialect=dialect))
        assert table.name in ddl
    assert "CLOB" in str(CreateTable(metadata.tables["batch_step_result"]).compile(dialect=dialect))
