"""`alembic upgrade head` yields exactly the tables the code declares, on every database."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from stepline.stores.migrations import current_revision, head_revision
from stepline.stores.schema import declared_for, metadata
from stepline.stores.sqlalchemy import SqlAlchemyStore


def _differences(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": False}
        )
        return list(compare_metadata(context, declared_metadata(conn.dialect)))


def declared_metadata(dialect: sa.Dialect) -> sa.MetaData:
    """The declared tables without the indexes and constraints ``dialect`` does not get
    (the Oracle-only function-based unique indexes, and their composite twins on Oracle)."""
    skipped = {
        (type(item), item.name)
        for table in metadata.tables.values()
        for item in [*table.indexes, *table.constraints]
        if not declared_for(item, dialect)
    }
    copy = sa.MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.sorted_tables:
        clone = table.to_metadata(copy)
        clone.indexes = {i for i in clone.indexes if (type(i), i.name) not in skipped}
        clone.constraints = {c for c in clone.constraints if (type(c), c.name) not in skipped}
    return copy


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


def test_the_oracle_ddl_compiles() -> None:
    """No Oracle server runs here; at least every table must compile for its dialect."""
    from sqlalchemy.dialects import oracle
    from sqlalchemy.schema import CreateTable

    dialect = oracle.dialect()
    for table in metadata.sorted_tables:
        ddl = str(CreateTable(table).compile(dialect=dialect))
        assert table.name in ddl
    assert "CLOB" in str(CreateTable(metadata.tables["batch_step_result"]).compile(dialect=dialect))
