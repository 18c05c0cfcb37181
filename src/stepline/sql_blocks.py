"""PL/SQL blocks and stored functions as steps (re-exported by :mod:`stepline.sql`)::

    - key: refresh
      runner: stepline.sql:run_block
      with:
        connection: report
        block: "BEGIN pkg.refresh(:week, :rows); END;"
        params: {week: "{{ params.week }}"}
        out: ["rows:integer"]
    - key: farms
      runner: stepline.sql:call_function
      with: {connection: report, function: pkg.active_farms, args: [WEEK], returns: cursor}

On Oracle they use python-oracledb's own calls on the driver connection (``execute`` with
``cursor.var`` for OUT binds, ``callfunc``), through the functions :func:`oracle_block` and
:func:`oracle_function`, which take any object with python-oracledb's Connection API.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from stepline.core.context import DoNotRetry, StepContext
from stepline.sql_errors import database_error

__all__ = ["call_function", "oracle_block", "oracle_function", "run_block"]


def run_block(ctx: StepContext) -> dict[str, Any]:
    """Run an anonymous block on ``with.connection`` and commit; returns ``{"out": {...}}``.

    ``with``: ``connection``, ``block`` (Oracle: ``BEGIN ... END;`` or ``DECLARE ...``;
    PostgreSQL: ``DO $$ ... $$`` or a PL/pgSQL ``BEGIN ... END``; MariaDB: ``BEGIN NOT
    ATOMIC ... END``, a plain ``BEGIN`` is made NOT ATOMIC), and on Oracle ``params`` (named
    binds ``:name``) and ``out`` (``["name:type"]``, OUT binds whose values become the result).
    """
    from stepline.sql import _engine, _out_spec, _text_arg, json_safe

    args = ctx.args
    name, block = _text_arg(args, "connection"), _text_arg(args, "block")
    params = args.get("params") or {}
    if not isinstance(params, Mapping):
        raise DoNotRetry("stepline.sql:run_block: 'params' must be a mapping")
    try:
        outs = [_out_spec(spec, f"out[{i}]") for i, spec in enumerate(args.get("out") or [])]
    except ValueError as exc:
        raise DoNotRetry(f"stepline.sql:run_block: {exc}") from None
    engine = _engine(ctx, name)
    dialect = engine.dialect.name
    ctx.log.info("running block", connection=name, dialect=dialect)
    if dialect == "oracle":
        raw = engine.raw_connection()
        try:
            out = oracle_block(raw, block, params, [(o.name, o.type) for o in outs])
        finally:
            raw.close()
        return {"out": json_safe(out)}
    if params or outs:
        raise DoNotRetry(
            f"stepline.sql:run_block: params and out are supported on Oracle only ({dialect})"
        )
    if dialect == "postgresql":
        if not re.match(r"(?i)\s*do\b", block):
            block = f"DO $stepline$ {block} $stepline$"
    elif dialect in ("mysql", "mariadb"):
        block = re.sub(r"(?i)^\s*begin\b(?!\s+not\s+atomic)", "BEGIN NOT ATOMIC", block)
    else:
        raise DoNotRetry(f"stepline.sql:run_block: a {dialect} database has no blocks")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(block, execution_options={"no_parameters": True})
    except sa.exc.DBAPIError as exc:
        raise database_error(exc, f"block on connection {name!r}") from exc
    return {"out": {}}


def call_function(ctx: StepContext) -> dict[str, Any]:
    """Call a stored function on ``with.connection``; its value or its rows are the result.

    ``with``: ``connection``, ``function`` (plain identifier, optionally qualified), ``args``
    (IN values, typed as in call_procedure), ``returns`` (``value``, the default, or
    ``cursor`` for a function returning SYS_REFCURSOR / refcursor), ``type`` of the value
    (string, number, integer, float, date, timestamp, clob) and ``max_rows`` (default 10,000;
    more rows fail the step rather than storing a truncated result). Returns
    ``{"function": name, "value": v}`` or ``{"function": name, "rows": [{column: v}...]}``.
    Committed when it returns.
    """
    from stepline.sql import (
        DEFAULT_MAX_ROWS,
        _engine,
        _param_type,
        _text_arg,
        call_slots,
        json_safe,
        validate_procedure_name,
    )

    args = ctx.args
    name = _text_arg(args, "connection")
    returns = str(args.get("returns", "value")).lower()
    try:
        function = validate_procedure_name(args.get("function"))
        values, slots = call_slots(args.get("args") or [])
        if any(slot is not None for slot in slots):
            raise ValueError("a function takes IN arguments only; use call_procedure for OUT")
        if returns not in ("value", "cursor"):
            raise ValueError(f"returns must be 'value' or 'cursor', got {returns!r}")
        kind = _param_type(args.get("type"), "type")
        max_rows = int(args.get("max_rows", DEFAULT_MAX_ROWS))
    except ValueError as exc:
        raise DoNotRetry(f"stepline.sql:call_function: {exc}") from None
    engine = _engine(ctx, name)
    dialect = engine.dialect.name
    ctx.log.info("calling function", connection=name, function=function, dialect=dialect)
    if dialect == "oracle":
        raw = engine.raw_connection()
        try:
            result = oracle_function(raw, function, values, returns, kind, max_rows)
        finally:
            raw.close()
    elif dialect in ("postgresql", "mysql", "mariadb"):
        result = _sql_function(engine, function, values, returns, max_rows)
    else:
        raise DoNotRetry(f"stepline.sql:call_function: a {dialect} database has no functions")
    key = "rows" if returns == "cursor" else "value"
    return {"function": function, key: json_safe(result)}


def oracle_block(
    connection: Any, block: str, params: Mapping[str, Any], outs: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """Execute a PL/SQL ``block`` with named binds and OUT variables, then commit.

    ``connection`` has python-oracledb's Connection API. Driver errors become DatabaseError
    (ORA code first); the transaction is rolled back.
    """
    from stepline.sql import _oracle_type, _read_lob

    try:
        cursor = connection.cursor()
        try:
            binds: dict[str, Any] = dict(params)
            variables = {name: cursor.var(_oracle_type(kind)) for name, kind in outs}  # type: ignore[arg-type]
            binds.update(variables)
            cursor.execute(block, binds)
            out = {name: _read_lob(var.getvalue()) for name, var in variables.items()}
        finally:
            cursor.close()
        connection.commit()
        return out
    except Exception as exc:
        connection.rollback()
        if _driver_error(exc):
            raise database_error(exc, "PL/SQL block") from exc
        raise


def oracle_function(
    connection: Any, function: str, values: Sequence[Any], returns: str, kind: str, max_rows: int
) -> Any:
    """``cursor.callfunc`` with positional IN ``values``; a returned cursor's rows as dicts."""
    import oracledb

    from stepline.sql import _oracle_type, _read_lob

    try:
        cursor = connection.cursor()
        try:
            if returns == "cursor":
                ref = cursor.callfunc(function, oracledb.DB_TYPE_CURSOR, list(values))
                result: Any = _rows(ref, max_rows)
            else:
                value = cursor.callfunc(function, _oracle_type(kind), list(values))  # type: ignore[arg-type]
                result = _read_lob(value)
        finally:
            cursor.close()
        connection.commit()
        return result
    except Exception as exc:
        connection.rollback()
        if _driver_error(exc):
            raise database_error(exc, f"function {function}") from exc
        raise


def _sql_function(
    engine: sa.Engine, function: str, values: Sequence[Any], returns: str, max_rows: int
) -> Any:
    binds = {f"p{n}": v for n, v in enumerate(values, start=1)}
    call = f"{function}({', '.join(':' + k for k in binds)})"
    try:
        with engine.begin() as conn:
            if returns == "value":
                return conn.execute(sa.text(f"SELECT {call} AS value"), binds).scalar()
            if engine.dialect.name != "postgresql":
                raise DoNotRetry(
                    "MariaDB/MySQL functions cannot return a cursor; call a procedure that "
                    "SELECTs, or use stepline.sql:execute"
                )
            portal = conn.execute(sa.text(f"SELECT {call}"), binds).scalar()
            quoted = '"' + str(portal).replace('"', '""') + '"'
            result = conn.exec_driver_sql(f"FETCH FORWARD {max_rows + 1} FROM {quoted}")
            return _rows(result.cursor, max_rows)
    except sa.exc.DBAPIError as exc:
        raise database_error(exc, f"function {function}") from exc


def _rows(cursor: Any, max_rows: int) -> list[dict[str, Any]]:
    from stepline.sql import _read_lob

    columns = [str(d[0]).lower() for d in cursor.description or ()]
    rows = cursor.fetchmany(max_rows + 1)
    if len(rows) > max_rows:
        raise DoNotRetry(
            f"the function returned more than max_rows={max_rows} rows; aggregate in SQL or "
            "raise max_rows (step results are stored in Stepline's database)"
        )
    return [dict(zip(columns, (_read_lob(v) for v in row), strict=True)) for row in rows]


def _driver_error(exc: BaseException) -> bool:
    return isinstance(exc, sa.exc.DBAPIError) or type(exc).__module__.startswith("oracledb")
