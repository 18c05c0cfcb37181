"""Create the weekly report's tables and procedure, and load sample farms.

    python -m examples.weekly_report.setup_db                 # on STEPLINE_CONNECTIONS__REPORT
    python -m examples.weekly_report.setup_db --sample        # ... and the five sample farms
    python -m examples.weekly_report.setup_db --url sqlite:///weekly_report.db --sample

    python -m examples.weekly_report.setup_db --schema REPORT_DEMO     # in a schema of its own

Runs ``schema/<dialect>.sql`` statement by statement. The splitter understands what the
databases' own clients do: PostgreSQL dollar quotes (``$$ ... $$``), the MariaDB/MySQL
client's ``DELIMITER`` lines, and SQL*Plus's ``/`` line after each Oracle PL/SQL unit.

It never replaces what is already there: existing tables are kept, and if a procedure of
the same name exists (the real SP_INS_WEEK_MAIN of a production schema) it stops before
running anything, unless ``--force`` is given. ``--schema`` works in another schema
(Oracle: CURRENT_SCHEMA; PostgreSQL: search_path; MariaDB: the database).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from examples.weekly_report.weekly_report import TA_FARM, upsert

from stepline.connections import Connections, safe_url

SCHEMA_DIR = Path(__file__).parent / "schema"

SAMPLE_FARMS: tuple[dict[str, Any], ...] = (
    {"farm_id": "F001", "farm_name": "Seoul demo farm", "lat": 37.5665, "lon": 126.9780},
    {"farm_id": "F002", "farm_name": "Icheon pig farm", "lat": 37.2720, "lon": 127.4350},
    {"farm_id": "F003", "farm_name": "Hongseong pig farm", "lat": 36.6012, "lon": 126.6608},
    {"farm_id": "F004", "farm_name": "Gimhae pig farm", "lat": 35.2285, "lon": 128.8894},
    {"farm_id": "F005", "farm_name": "Jeju pig farm", "lat": 33.4996, "lon": 126.5312},
)

_SCHEMA_FILES = {
    "postgresql": "postgresql.sql",
    "mysql": "mariadb.sql",
    "mariadb": "mariadb.sql",
    "oracle": "oracle.sql",
    "sqlite": "sqlite.sql",
}
_PLSQL_UNIT = re.compile(
    r"\s*(?:create\s+(?:or\s+replace\s+)?(?:(?:non)?editionable\s+)?"
    r"(?:procedure|function|package|trigger|type)\b|begin\b|declare\b)",
    re.IGNORECASE,
)
_DELIMITER = re.compile(r"delimiter\s+(\S+)", re.IGNORECASE)
_DOLLAR_TAG = re.compile(r"\$[A-Za-z_]*\$")


def split_sql_script(text: str, dialect: str) -> list[str]:
    """The statements of an SQL script, without comments and terminators.

    ``--`` and ``/* */`` comments are dropped; quotes ('...', "...") and PostgreSQL dollar
    quotes are kept whole. MariaDB/MySQL: a ``DELIMITER x`` line changes the terminator.
    Oracle: a PL/SQL unit (CREATE PROCEDURE..., BEGIN, DECLARE) ends at a line holding only
    ``/`` and keeps its final ``END;``; other statements end at ``;``.
    """
    mysql = dialect in ("mysql", "mariadb")
    oracle = dialect == "oracle"
    statements: list[str] = []
    buffer: list[str] = []
    delimiter = ";"
    plsql = False
    i, n = 0, len(text)

    def flush() -> None:
        statement = "".join(buffer).strip()
        buffer.clear()
        if statement:
            statements.append(statement)

    line_start = True
    while i < n:
        if line_start:
            line_start = False
            end = text.find("\n", i)
            end = n if end < 0 else end
            line = text[i:end].strip()
            pending = "".join(buffer).strip()
            if mysql and not pending and (match := _DELIMITER.fullmatch(line)):
                delimiter = match.group(1)
                i = end + 1
                line_start = True
                continue
            if oracle and line == "/":
                flush()
                plsql = False
                i = end + 1
                line_start = True
                continue
        char = text[i]
        if char == "\n":
            buffer.append(char)
            line_start = True
            i += 1
        elif text.startswith("--", i) or (mysql and char == "#"):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif char in ("'", '"'):
            end = i + 1
            while end < n:
                if text[end] == char:
                    if end + 1 < n and text[end + 1] == char:  # doubled quote inside
                        end += 2
                        continue
                    break
                end += 1
            buffer.append(text[i : end + 1])
            i = end + 1
        elif char == "$" and dialect == "postgresql" and (tag := _DOLLAR_TAG.match(text, i)):
            close = text.find(tag.group(0), tag.end())
            close = n if close < 0 else close + len(tag.group(0))
            buffer.append(text[i:close])
            i = close
        elif text.startswith(delimiter, i) and not plsql:
            if oracle and _PLSQL_UNIT.match("".join(buffer)):
                # Inside a PL/SQL unit ';' ends statements of its body, not the unit.
                plsql = True
                buffer.append(char)
                i += 1
                continue
            flush()
            i += len(delimiter)
        else:
            buffer.append(char)
            i += 1
    flush()
    return statements


def schema_statements(dialect: str) -> list[str]:
    """The statements of the schema file for ``dialect`` (a SQLAlchemy dialect name)."""
    try:
        name = _SCHEMA_FILES[dialect]
    except KeyError:
        raise ValueError(f"no schema for a {dialect!r} database") from None
    return split_sql_script((SCHEMA_DIR / name).read_text(encoding="utf-8"), dialect)


class ObjectExists(Exception):
    """The schema already holds a procedure the script would create."""


_CREATE = re.compile(
    r"\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:(?:NON)?EDITIONABLE\s+)?"
    r"(TABLE|PROCEDURE|FUNCTION|INDEX)\s+(?:IF\s+NOT\s+EXISTS\s+)?([\w$#]+)"
    r"(?:\s+ON\s+([\w$#]+))?",
    re.IGNORECASE,
)


def plan_statements(
    statements: Sequence[str],
    dialect: str,
    existing: dict[str, set[str]],
    *,
    force: bool = False,
) -> list[str]:
    """The statements to run, given the objects that ``existing`` lists (kind -> UPPER names).

    Tables that exist are kept (their CREATE, and on Oracle their indexes, are skipped).
    A procedure or function that exists raises ObjectExists, or with ``force`` is replaced
    (Oracle/PostgreSQL: CREATE OR REPLACE; MariaDB: DROP then CREATE).
    """
    tables = existing.get("TABLE", set())
    routines = existing.get("PROCEDURE", set()) | existing.get("FUNCTION", set())
    planned: list[str] = []
    clashes: list[str] = []
    for statement in statements:
        match = _CREATE.match(statement)
        if match is None:
            planned.append(statement)
            continue
        kind, name, on = match.group(1).upper(), match.group(2).upper(), match.group(3)
        if kind == "TABLE" and name in tables:
            continue
        if kind == "INDEX" and on and on.upper() in tables:
            continue
        if kind in ("PROCEDURE", "FUNCTION") and name in routines:
            if not force:
                clashes.append(f"{name} ({kind.lower()})")
                continue
            if dialect in ("mysql", "mariadb"):
                planned.append(f"DROP {kind} IF EXISTS {name}")
            else:
                statement = re.sub(
                    r"(?i)^\s*CREATE\s+(?:OR\s+REPLACE\s+)?", "CREATE OR REPLACE ", statement
                )
        planned.append(statement)
    if clashes:
        raise ObjectExists(
            f"{', '.join(clashes)} already exist(s) here and would be replaced; setup_db never "
            "replaces an existing procedure. Run it in a schema of its own (--schema, or a "
            "URL of another database), or pass --force to replace them"
        )
    return planned


def existing_objects(conn: sa.Connection, schema: str | None = None) -> dict[str, set[str]]:
    """Tables, procedures and functions in ``schema`` (default: the connection's own)."""
    dialect = conn.dialect.name
    found: dict[str, set[str]] = {"TABLE": set(), "PROCEDURE": set(), "FUNCTION": set()}
    found["TABLE"] = {t.upper() for t in sa.inspect(conn).get_table_names(schema=schema)}
    query = {
        "oracle": "SELECT object_name, object_type FROM all_objects WHERE owner = "
        "NVL(:schema, SYS_CONTEXT('USERENV', 'CURRENT_SCHEMA'))"
        " AND object_type IN ('PROCEDURE', 'FUNCTION')",
        "postgresql": "SELECT p.proname, CASE p.prokind WHEN 'p' THEN 'PROCEDURE'"
        " ELSE 'FUNCTION' END FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = COALESCE(:schema, current_schema())",
        "mysql": "SELECT routine_name, routine_type FROM information_schema.routines"
        " WHERE routine_schema = COALESCE(:schema, DATABASE())",
    }.get("mysql" if dialect == "mariadb" else dialect)
    if query is not None:
        for name, kind in conn.execute(sa.text(query), {"schema": schema}):
            found.setdefault(str(kind).upper(), set()).add(str(name).upper())
    return found


def apply_schema(engine: sa.Engine, *, force: bool = False, schema: str | None = None) -> int:
    """Create the tables and procedures on ``engine``; return the number of statements run.

    Checks what exists first (see plan_statements) and raises ObjectExists before running
    anything. Each statement runs and commits on its own, as a client would run the script
    (the PostgreSQL procedure is created outside any transaction).
    """
    dialect = engine.dialect.name
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        if schema is not None:
            _use_schema(conn, dialect, schema)
        owner = schema.upper() if schema and dialect == "oracle" else schema
        existing = existing_objects(conn, owner)
        statements = plan_statements(schema_statements(dialect), dialect, existing, force=force)
        for statement in statements:
            # no_parameters: the driver must not read '%' in the text as a placeholder.
            conn.exec_driver_sql(statement, execution_options={"no_parameters": True})
    return len(statements)


def _use_schema(conn: sa.Connection, dialect: str, schema: str) -> None:
    conn.exec_driver_sql(_schema_statement(dialect, schema))


def _schema_statement(dialect: str, schema: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w$#]{0,127}", schema):
        raise ValueError(f"--schema {schema!r} is not a plain identifier")
    statement = {
        "oracle": f"ALTER SESSION SET CURRENT_SCHEMA = {schema}",
        "postgresql": f"SET search_path TO {schema}",
        "mysql": f"USE {schema}",
        "mariadb": f"USE {schema}",
    }.get(dialect)
    if statement is None:
        raise ValueError(f"--schema is not supported on {dialect}")
    return statement


def seed_farms(engine: sa.Engine, farms: Sequence[dict[str, Any]] = SAMPLE_FARMS) -> int:
    """Upsert ``farms`` (farm_id, farm_name, lat, lon, optional use_yn) into TA_FARM."""
    rows = [{"use_yn": "Y", **farm} for farm in farms]
    with engine.begin() as conn:
        return upsert(conn, TA_FARM, rows, ["farm_id"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", help="SQLAlchemy URL (default: the Stepline connection)")
    parser.add_argument("--connection", default="report", help="Stepline connection name")
    parser.add_argument("--sample", action="store_true", help="load the sample farms")
    parser.add_argument("--schema", help="work in this schema (it must exist)")
    parser.add_argument(
        "--force", action="store_true", help="replace procedures that exist already"
    )
    args = parser.parse_args(argv)
    connections = Connections({"target": args.url}) if args.url else Connections.from_settings()
    try:
        engine = connections.engine("target" if args.url else args.connection)
    except KeyError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.schema:
        # Every connection of this engine works in that schema (seed_farms too).
        schema = args.schema
        try:
            _schema_statement(engine.dialect.name, schema)
        except ValueError as exc:
            print(str(exc), file=sys.stderr)
            connections.dispose()
            return 2

        @sa.event.listens_for(engine, "connect")
        def _schema(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(_schema_statement(engine.dialect.name, schema))
            cursor.close()
            dbapi_connection.commit()  # psycopg opened a transaction for it

    try:
        try:
            count = apply_schema(engine, force=args.force, schema=args.schema)
        except (ObjectExists, ValueError) as exc:
            print(f"{safe_url(str(engine.url))}: {exc}", file=sys.stderr)
            return 2
        print(f"{safe_url(str(engine.url))}: {count} schema statements applied")
        if args.sample:
            print(f"{seed_farms(engine)} sample farms loaded into TA_FARM")
    finally:
        connections.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
