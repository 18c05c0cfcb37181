"""The example's set-up helper never replaces the user's real procedure.

Against real PostgreSQL and MariaDB: a schema that already holds SP_INS_WEEK_MAIN (the
"production" one) is refused before anything runs, and the procedure is untouched;
``--force`` replaces it; ``--schema`` works in a schema of its own. Oracle's plan (which
statements run) is checked without a server.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from databases import create_database, drop_database

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from examples.weekly_report.setup_db import (  # noqa: E402
    ObjectExists,
    apply_schema,
    main,
    plan_statements,
    schema_statements,
)

PRODUCTION = {
    "postgresql": "CREATE PROCEDURE SP_INS_WEEK_MAIN(p_period VARCHAR, p_base_date DATE)"
    " LANGUAGE sql AS $$ SELECT 'the real one' $$",
    "mysql": "CREATE PROCEDURE SP_INS_WEEK_MAIN(IN p_period VARCHAR(10), IN p_base_date DATE)"
    " SELECT 'the real one'",
}
BODY = {
    "postgresql": "SELECT prosrc FROM pg_proc WHERE proname = 'sp_ins_week_main'",
    "mysql": "SELECT routine_definition FROM information_schema.routines"
    " WHERE routine_schema = DATABASE() AND routine_name = 'SP_INS_WEEK_MAIN'",
}


@pytest.fixture(params=["postgresql", "mariadb"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url, handle = create_database(request.param, tmp_path)
    yield url
    drop_database(request.param, handle)


def body(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return str(conn.exec_driver_sql(BODY[engine.dialect.name]).scalar())


def test_an_existing_procedure_is_never_replaced_without_force(database: str) -> None:
    engine = sa.create_engine(database)
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql(PRODUCTION[engine.dialect.name])
        with pytest.raises(ObjectExists, match=r"SP_INS_WEEK_MAIN \(procedure\).*--force"):
            apply_schema(engine)
        assert "the real one" in body(engine)
        assert sa.inspect(engine).get_table_names() == []  # refused before anything ran
        assert main(["--url", database]) == 2
        assert "the real one" in body(engine)

        assert main(["--url", database, "--force", "--sample"]) == 0
        assert "the real one" not in body(engine)
        assert main(["--url", database, "--sample"]) == 2  # ours exists now: still refused
    finally:
        engine.dispose()


def test_the_helper_works_in_a_schema_of_its_own(database: str) -> None:
    engine = sa.create_engine(database, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(PRODUCTION[engine.dialect.name])
            conn.exec_driver_sql(
                "CREATE SCHEMA report_demo"
                if engine.dialect.name == "postgresql"
                else "CREATE DATABASE report_demo"
            )
        try:
            assert main(["--url", database, "--schema", "report_demo", "--sample"]) == 0
            assert "the real one" in body(engine)  # the production schema is untouched
            tables = sa.inspect(engine).get_table_names(schema="report_demo")
            assert {t.upper() for t in tables} >= {"TA_FARM", "TR_WEEKLY_FARM_REPORT"}
            with engine.connect() as conn:
                farms = conn.exec_driver_sql("SELECT count(*) FROM report_demo.TA_FARM").scalar()
            assert farms == 5
            assert main(["--url", database, "--schema", "bad name"]) == 2
        finally:
            if engine.dialect.name == "mysql":
                with engine.connect() as conn:
                    conn.exec_driver_sql("DROP DATABASE report_demo")
    finally:
        engine.dispose()


def test_the_oracle_plan_keeps_tables_and_refuses_or_replaces_procedures() -> None:
    statements = schema_statements("oracle")
    fresh = plan_statements(statements, "oracle", {})
    assert fresh == statements
    existing = {"TABLE": {"TA_FARM", "TS_INS_JOB_LOG"}, "PROCEDURE": {"SP_INS_WEEK_MAIN"}}
    with pytest.raises(ObjectExists, match="SP_INS_WEEK_MAIN"):
        plan_statements(statements, "oracle", existing)
    forced = plan_statements(statements, "oracle", existing, force=True)
    assert not any(s.startswith("CREATE TABLE TA_FARM ") for s in forced)
    assert not any(s.startswith("CREATE INDEX IX_TS_INS_JOB_LOG_JOB") for s in forced)
    assert any(s.startswith("CREATE TABLE TM_WEATHER") for s in forced)
    assert forced[-1].startswith("CREATE OR REPLACE PROCEDURE SP_INS_WEEK_MAIN")
    assert forced[-2].startswith("CREATE PROCEDURE SP_INS_JOB_LOG_WRITE")  # not there: created
