"""Create the weekly report's tables and procedure, and load sample farms.

    python -m examples.weekly_report.setup_db                 # on STEPLINE_CONNECTIONS__REPORT
    python -m examples.weekly_report.setup_db --sample        # ... and the five sample farms
    python -m examples.weekly_report.setup_db --url sqlite:///weekly_report.db --sample

Runs ``schema/<dialect>.sql`` statement by statement. The splitter understands what the
databases' own clients do: PostgreSQL dollar quotes (``$$ ... $$``), the MariaDB/MySQL
client's ``DELIMITER`` lines, and SQL*Plus's ``/`` line after each Oracle PL/SQL unit.
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


def apply_schema(engine: sa.Engine) -> int:
    """Create the tables and procedures on ``engine``; return the number of statements run.

    Each statement runs and commits on its own, as a client would run the script (the
    PostgreSQL procedure is created outside any transaction).
    """
    statements = schema_statements(engine.dialect.name)
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for statement in statements:
            # no_parameters: the driver must not read '%' in the text as a placeholder.
            conn.exec_driver_sql(statement, execution_options={"no_parameters": True})
    return len(statements)


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
    args = parser.parse_args(argv)
    connections = Connections({"target": args.url}) if args.url else Connections.from_settings()
    try:
        engine = connections.engine("target" if args.url else args.connection)
    except KeyError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    try:
        count = apply_schema(engine)
        print(f"{safe_url(str(engine.url))}: {count} schema statements applied")
        if args.sample:
            print(f"{seed_farms(engine)} sample farms loaded into TA_FARM")
    finally:
        connections.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
