"""Database errors of the SQL runners as step errors that keep the database's error code.

``ORA-00060`` (Oracle), the SQLSTATE ``40P01`` (PostgreSQL) or the error number ``1213``
(MariaDB/MySQL) is the first word of the message and the ``code`` of :class:`DatabaseError`,
so a step's stored error names it and ``retry: {on: [ORA-00060]}`` can match it.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

__all__ = ["DatabaseError", "database_error", "error_code", "error_codes"]

_ORA = re.compile(r"\b(?:ORA|PLS|DPY|DPI)-\d{4,5}\b")


class DatabaseError(Exception):
    """The database refused a statement a SQL runner sent; retried per the step's policy.

    ``code`` is the database's most specific code; ``codes`` every code it gave (MariaDB:
    the error number and the SQLSTATE).
    """

    def __init__(self, message: str, code: str | None = None, codes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.codes = codes or ((code,) if code else ())


def error_codes(error: BaseException) -> tuple[str, ...]:
    """The database's codes for ``error`` (a driver error, or SQLAlchemy's wrapper of one)."""
    original: Any = error.orig if isinstance(error, sa.exc.DBAPIError) else error
    details = original.args[0] if getattr(original, "args", None) else None
    found: list[str] = []
    full = getattr(details, "full_code", None)  # python-oracledb's _Error: "ORA-00060"
    if isinstance(full, str) and full:
        found.append(full)
    if type(original).__module__.startswith("pymysql") and isinstance(details, int):
        found.append(str(details))
    sqlstate = getattr(original, "sqlstate", None)  # psycopg 3, PyMySQL
    if isinstance(sqlstate, str) and sqlstate:
        found.append(sqlstate)
    found += _ORA.findall(str(original)) if not found else []
    return tuple(dict.fromkeys(found))


def error_code(error: BaseException) -> str | None:
    """The most specific of :func:`error_codes`, or None."""
    codes = error_codes(error)
    return codes[0] if codes else None


def database_error(error: BaseException, where: str) -> DatabaseError:
    """``error`` as a DatabaseError whose message starts with its code, then ``where``."""
    original = error.orig if isinstance(error, sa.exc.DBAPIError) else error
    codes = error_codes(error)
    code = codes[0] if codes else None
    text = " ".join(str(original).split()) or type(original).__name__
    if code and not text.startswith(code):
        text = f"{code}: {text}"
    return DatabaseError(f"{text} ({where})", code, codes)
