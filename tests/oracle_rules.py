"""Oracle's rules for SQL text, checked on statements compiled for the Oracle dialect.

No Oracle server runs in this project's tests; these checks are what can be verified
without one. Each returns a list of problems (empty: the statement follows the rules).
"""

from __future__ import annotations

import re

# V$RESERVED_WORDS where RESERVED = 'Y' (Oracle Database SQL Language Reference, "Oracle SQL
# Reserved Words"): an identifier spelled like one of these must be quoted.
_WORDS = """ACCESS ADD ALL ALTER AND ANY AS ASC AUDIT BETWEEN BY CHAR CHECK CLUSTER COLUMN COMMENT
    COMPRESS CONNECT CREATE CURRENT DATE DECIMAL DEFAULT DELETE DESC DISTINCT DROP ELSE
    EXCLUSIVE EXISTS FILE FLOAT FOR FROM GRANT GROUP HAVING IDENTIFIED IMMEDIATE IN INCREMENT
    INDEX INITIAL INSERT INTEGER INTERSECT INTO IS LEVEL LIKE LOCK LONG MAXEXTENTS MINUS
    MLSLABEL MODE MODIFY NOAUDIT NOCOMPRESS NOT NOWAIT NULL NUMBER OF OFFLINE ON ONLINE OPTION
    OR ORDER PCTFREE PRIOR PUBLIC RAW RENAME RESOURCE REVOKE ROW ROWID ROWNUM ROWS SELECT
    SESSION SET SHARE SIZE SMALLINT START SUCCESSFUL SYNONYM SYSDATE TABLE THEN TO TRIGGER UID
    UNION UNIQUE UPDATE USER VALIDATE VALUES VARCHAR VARCHAR2 VIEW WHENEVER WHERE WITH"""
RESERVED = frozenset(_WORDS.split())
MAX_IDENTIFIER = 128  # Oracle 12.2 and later
MAX_BIND_NAME = 30  # python-oracledb/Oracle bind names: keep to the historical 30 bytes
MAX_IN_LIST = 999  # ORA-01795: at most 1000 expressions in a list

_STRING = re.compile(r"'(?:[^']|'')*'")
_QUOTED = re.compile(r'"([^"]*)"')
_BIND = re.compile(r'(?<![:\w]):("[^"]+"|[A-Za-z_$#][\w$#]*|\d+)')
_IN_LIST = re.compile(r"\bIN\s*\(([^()]*)\)", re.IGNORECASE)


def _code(sql: str) -> str:
    """``sql`` with string literals blanked (their content is data, not SQL)."""
    return _STRING.sub("''", sql)


def problems(sql: str, identifiers: frozenset[str] = frozenset()) -> list[str]:
    """Every rule ``sql`` breaks. ``identifiers``: table/column names the statement may use
    (those that are reserved words must appear quoted)."""
    found: list[str] = []
    code = _code(sql)
    bare = _BIND.sub(":?", _QUOTED.sub('""', code))
    upper = bare.upper()
    if re.search(r"\bLIMIT\b", upper):
        found.append("LIMIT is not Oracle SQL (use FETCH FIRST n ROWS ONLY)")
    if re.search(r"\b(TRUE|FALSE)\b", upper):
        found.append("boolean literal (Oracle before 23ai has no BOOLEAN in SQL)")
    if re.search(r"\bBOOLEAN\b", upper):
        found.append("BOOLEAN column type (Oracle before 23ai has none)")
    if re.search(r"\bFOR\s+UPDATE\b", upper) and re.search(
        r"\bFETCH\s+FIRST\b|\bDISTINCT\b|\bGROUP\s+BY\b|\bCOUNT\s*\(", upper
    ):
        found.append("FOR UPDATE with FETCH FIRST/DISTINCT/GROUP BY/aggregate (ORA-02014)")
    if re.match(r"\s*SELECT\b", upper) and not re.search(r"\bFROM\b", upper):
        found.append("SELECT without FROM (Oracle before 23ai needs FROM DUAL)")
    if code.rstrip().endswith(";") and not re.search(r"\bEND\s*;\s*$", upper):
        found.append("trailing ';' after a SQL statement (ORA-00933)")
    for name in _QUOTED.findall(code):
        if len(name.encode()) > MAX_IDENTIFIER:
            found.append(f"quoted identifier longer than {MAX_IDENTIFIER} bytes: {name[:40]}...")
    for word in re.findall(r"[A-Za-z_][\w$#]*", bare):
        if len(word.encode()) > MAX_IDENTIFIER:
            found.append(f"identifier longer than {MAX_IDENTIFIER} bytes: {word[:40]}...")
    for bind in _BIND.findall(code):
        if bind.startswith('"') or bind.isdigit():
            continue
        if bind.upper() in RESERVED:
            found.append(f"bind name :{bind} is an Oracle reserved word (ORA-01745)")
        if not re.fullmatch(r"[A-Za-z][\w$#]*", bind):
            found.append(f"bind name :{bind} must start with a letter (python-oracledb)")
        if len(bind.encode()) > MAX_BIND_NAME:
            found.append(f"bind name :{bind} longer than {MAX_BIND_NAME} bytes")
    for items in _IN_LIST.findall(code):
        count = items.count(",") + 1
        if count > MAX_IN_LIST:
            found.append(f"IN list of {count} expressions (ORA-01795: at most 1000)")
    for name in identifiers:
        if name.upper() in RESERVED and re.search(rf"(?<![\w\"]){name}(?![\w\"])", bare, re.I):
            found.append(f"reserved word {name!r} used as an identifier without quotes")
    return found
