"""`alembic upgrade head` yields exactly the tables the code declares, on every database;
and a new database, whose tables are created as declared and stamped at head, gets the
same schema as `alembic upgrade head` would give it."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.schema import CreateTable

from databases import ALL_BACKENDS, create_database, drop_database
from stepline import batch, step
from stepline.errors import StoreUnavailable
from stepline.service import Stepline
from stepline.stores.migrations import (
    VERSION_TABLE,
    alembic_config,
    current_revision,
    declared_head,
    head_revision,
    version_table,
)
from stepline.stores.schema import declared_for, metadata
from stepline.stores.sqlalchemy import SqlAlchemyStore


def _differences(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "compare_server_default": False,
                "version_table": VERSION_TABLE,
            },
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
    # Alembic's own upgrade: a store would create a new database's tables as declared.
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
    finally:
        engine.dispose()
    store = SqlAlchemyStore(db_url)
    try:
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


# -- a new database: created as declared and stamped, the same as `alembic upgrade head` ----


def _schema(engine: sa.Engine) -> dict[str, Any]:
    """Everything reflection tells of each table: columns (type as the database names it,
    nullability, default, autoincrement, identity), keys, indexes, unique and check
    constraints; and the revision stored."""
    inspector = sa.inspect(engine)
    dialect = engine.dialect

    def column(c: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in c.items() if k not in ("type", "comment")}
        return {**kept, "type": c["type"].compile(dialect=dialect)}

    def options(table: str) -> dict[str, Any]:
        try:
            return inspector.get_table_options(table)  # MySQL's engine and charset
        except NotImplementedError:  # a dialect that has none to tell
            return {}

    def by_name(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(items, key=lambda item: str(item.get("name")))

    tables = {
        table: {
            "columns": [column(c) for c in inspector.get_columns(table)],
            "primary key": inspector.get_pk_constraint(table),
            "foreign keys": by_name(inspector.get_foreign_keys(table)),
            "indexes": by_name(inspector.get_indexes(table)),
            "unique": by_name(inspector.get_unique_constraints(table)),
            "checks": by_name(inspector.get_check_constraints(table)),
            "options": options(table),
        }
        for table in sorted(inspector.get_table_names())
    }
    return {"tables": tables, "revision": _versions(engine, VERSION_TABLE)}


@pytest.fixture(params=ALL_BACKENDS)
def two_databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two clean databases on the same backend."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, first_handle = create_database(request.param, tmp_path / "a")
    try:
        second, second_handle = create_database(request.param, tmp_path / "b")
        try:
            yield first, second
        finally:
            drop_database(request.param, second_handle)
    finally:
        drop_database(request.param, first_handle)


def test_a_new_database_is_created_at_head_as_alembic_upgrade_head_creates_it(
    two_databases: tuple[str, str],
) -> None:
    migrated_url, created_url = two_databases
    migrated, created = sa.create_engine(migrated_url), sa.create_engine(created_url)
    try:
        with migrated.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        store = SqlAlchemyStore(created_url)
        try:
            store.initialize()  # a new database: created as declared, and stamped
        finally:
            store.dispose()

        expected, got = _schema(migrated), _schema(created)
        assert set(got["tables"]) == set(expected["tables"])
        for table in expected["tables"]:
            assert got["tables"][table] == expected["tables"][table], table
        assert got["revision"] == expected["revision"] == [head_revision()]
        assert _differences(created) == []
        with created.begin() as conn:
            assert current_revision(conn) == head_revision()  # Alembic reads the stamp
            command.upgrade(alembic_config(conn), "head")  # and has nothing to do
        assert _schema(created) == got
    finally:
        migrated.dispose()
        created.dispose()


def test_processes_that_open_a_new_database_at_once_create_it_once(db_url: str) -> None:
    stores = [SqlAlchemyStore(db_url) for _ in range(4)]
    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            list(pool.map(SqlAlchemyStore.initialize, stores))
        assert _versions(stores[0].engine, VERSION_TABLE) == [head_revision()]
        assert _differences(stores[0].engine) == []
    finally:
        for store in stores:
            store.dispose()


def test_the_version_table_is_declared_as_alembic_declares_it() -> None:
    from alembic.ddl.impl import DefaultImpl

    alembics = DefaultImpl.version_table_impl(
        None,  # type: ignore[arg-type]  # the default implementation uses no instance state
        version_table=VERSION_TABLE,
        version_table_schema=None,
        version_table_pk=True,
    )
    from sqlalchemy.dialects import mysql, oracle, postgresql, sqlite

    ours = version_table()
    for dialect in (d.dialect() for d in (sqlite, postgresql, mysql, oracle)):
        assert str(CreateTable(ours).compile(dialect=dialect)) == str(
            CreateTable(alembics).compile(dialect=dialect)
        )


def test_a_database_with_stepline_tables_but_no_revision_is_left_to_alembic(
    tmp_path: Path,
) -> None:
    """Only a database without any of Stepline's tables is created at head."""
    url = f"sqlite:///{tmp_path}/partial.db"
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            metadata.tables["batch_definition"].create(conn)
        store = SqlAlchemyStore(url)
        try:
            with pytest.raises(StoreUnavailable, match="table batch_definition already exists"):
                store.initialize()  # Alembic's 0001 creates batch_definition: it refuses
        finally:
            store.dispose()
        assert VERSION_TABLE not in _tables(engine)
    finally:
        engine.dispose()


def test_the_oracle_ddl_compiles() -> None:
    """No Oracle server runs here; at least every table must compile for its dialect."""
    from sqlalchemy.dialects import oracle
    from sqlalchemy.schema import CreateTable

    dialect = oracle.dialect()
    for table in metadata.sorted_tables:
        ddl = str(CreateTable(table).compile(dialect=dialect))
        assert table.name in ddl
    assert "CLOB" in str(CreateTable(metadata.tables["batch_step_result"]).compile(dialect=dialect))


# -- the version table: Stepline's own, beside an application's Alembic ----------------------


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def _versions(engine: sa.Engine, table: str) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.text(f"SELECT version_num FROM {table}")).scalars())


def _store_with_an_instance(db_url: str) -> int:
    """Apply a batch and create one instance in it; returns the instance id."""
    with Stepline(db=db_url) as service:
        service.apply(batch("kept", [step("only", "stepline.sql:call_procedure")]))
        instance, _ = service.trigger("kept", {"period": "WEEK"})
        return instance.id


def test_stepline_keeps_its_revision_in_a_table_of_its_own(db_url: str) -> None:
    store = SqlAlchemyStore(db_url)
    try:
        store.initialize()
        tables = _tables(store.engine)
        assert VERSION_TABLE in tables
        assert "alembic_version" not in tables
        assert _versions(store.engine, VERSION_TABLE) == [head_revision()]
    finally:
        store.dispose()


def test_a_database_of_the_previous_release_keeps_working_with_its_data(db_url: str) -> None:
    """Releases before this one kept revision 0001 in ``alembic_version``."""
    instance_id = _store_with_an_instance(db_url)
    engine = sa.create_engine(db_url)
    try:
        # Back to what the previous release left: the schema of revision 0001, with that
        # revision in the default table.
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0001")
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {VERSION_TABLE}"))
            conn.execute(
                sa.text(
                    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"
                )
            )
            conn.execute(sa.text("INSERT INTO alembic_version (version_num) VALUES ('0001')"))

        with Stepline(db=db_url) as service:
            kept = service.store.instance(instance_id)
            assert (kept.batch, kept.params) == ("kept", {"period": "WEEK"})
            again, _ = service.trigger("kept", {})
            assert again.id > instance_id

        tables = _tables(engine)
        assert "alembic_version" not in tables
        assert _versions(engine, VERSION_TABLE) == [head_revision()]
        assert _differences(engine) == []
    finally:
        engine.dispose()


def test_an_application_that_uses_alembic_keeps_its_revision(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"
                )
            )
            conn.execute(
                sa.text("INSERT INTO alembic_version (version_num) VALUES ('3f2a9c1b7e4d')")
            )
            conn.execute(sa.text("CREATE TABLE farm (farm_id VARCHAR(20) PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO farm (farm_id) VALUES ('F001')"))

        instance_id = _store_with_an_instance(db_url)
        with Stepline(db=db_url) as service:  # a second command on the shared database
            assert service.store.instance(instance_id).batch == "kept"

        assert _versions(engine, "alembic_version") == ["3f2a9c1b7e4d"]
        assert _versions(engine, VERSION_TABLE) == [head_revision()]
        with engine.connect() as conn:
            assert list(conn.execute(sa.text("SELECT farm_id FROM farm")).scalars()) == ["F001"]
    finally:
        engine.dispose()


def test_an_application_revision_named_like_ours_is_left_alone(db_url: str) -> None:
    """Without Stepline's tables, an ``alembic_version`` row of 0001 is the application's."""
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"
                )
            )
            conn.execute(sa.text("INSERT INTO alembic_version (version_num) VALUES ('0001')"))

        _store_with_an_instance(db_url)

        assert _versions(engine, "alembic_version") == ["0001"]
        assert _versions(engine, VERSION_TABLE) == [head_revision()]
    finally:
        engine.dispose()
