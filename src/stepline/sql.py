"""Built-in SQL runners: run a statement or call a stored procedure on a named connection.

Usable from YAML without code::

    - key: purge
      runner: stepline.sql:execute
      with: {connection: report, sql: "DELETE FROM T WHERE d < :d", params: {d: "2024-01-01"}}
    - key: run_report
      runner: stepline.sql:call_procedure
      with:
        connection: report
        procedure: SP_INS_WEEK_MAIN
        args: ["{{ params.period }}", {value: "{{ results.check.week_start }}", type: date}]
        out: ["rows_written:integer"]

``stepline.sql:run_block`` (PL/SQL and other anonymous blocks) and
``stepline.sql:call_function`` (a function's value or returned cursor) live in
:mod:`stepline.sql_blocks`. Database errors fail the step as :class:`DatabaseError`, whose
message starts with the database's code (``ORA-00060: ...``), for ``retry: {on: [...]}``.

Connections are the named business databases of :mod:`stepline.connections`
(``STEPLINE_CONNECTIONS__REPORT=...``). The dialect-specific SQL is built by pure functions
(:func:`call_slots`, :func:`call_statement`) that need no server.
"""

from __future__ import annotations

import base64
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import sqlalchemy as sa

from stepline.connections import UnknownConnection, connections_for
from stepline.core.context import DoNotRetry, StepContext
from stepline.sql_errors import DatabaseError, database_error

__all__ = [
    "CallStatement",
    "DatabaseError",
    "OutParam",
    "call_function",
    "call_procedure",
    "call_slots",
    "call_statement",
    "convert_value",
    "execute",
    "json_safe",
    "oracle_call",
    "run_block",
    "run_call",
    "validate_procedure_name",
]

DEFAULT_MAX_ROWS = 10_000

# One to three dot-separated plain identifiers (schema.package.procedure in Oracle). Quoted
# identifiers are refused on purpose: the name is pasted into SQL text, so only characters
# that cannot end an identifier's context are allowed.
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_$#]{0,127}"
_PROCEDURE_NAME = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER}){{0,2}}")

ParamType = Literal["string", "number", "integer", "float", "date", "timestamp", "clob"]
_TYPE_ALIASES: dict[str, ParamType] = {
    "string": "string",
    "str": "string",
    "text": "string",
    "varchar": "string",
    "varchar2": "string",
    "number": "number",
    "numeric": "number",
    "decimal": "number",
    "integer": "integer",
    "int": "integer",
    "float": "float",
    "double": "float",
    "date": "date",
    "timestamp": "timestamp",
    "datetime": "timestamp",
    "clob": "clob",
}
_DIALECTS = {"oracle": "oracle", "postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}


@dataclass(frozen=True)
class OutParam:
    """An OUT (or INOUT) parameter of a procedure: the key of its value in the step result."""

    name: str
    type: ParamType = "string"
    inout: bool = False


Slot = OutParam | None
"""One procedure parameter: None for an IN argument, an OutParam for OUT/INOUT."""


@dataclass(frozen=True)
class CallStatement:
    """The SQL that calls one procedure on one dialect.

    ``before`` runs first (MariaDB: ``SET @var = :pN`` for INOUT values), then ``sql``, then
    ``fetch`` (MariaDB: ``SELECT @var ...``), all on one connection. Bind parameters are
    named ``:p1``, ``:p2``... after the slot they fill, except on Oracle, where ``sql`` is an
    anonymous PL/SQL block with positional binds ``:1``, ``:2``... for the raw driver cursor
    (OUT parameters need driver variables, which SQLAlchemy text() cannot bind).
    """

    dialect: str
    sql: str
    slots: tuple[Slot, ...]
    before: tuple[str, ...] = ()
    fetch: str | None = None

    @property
    def out(self) -> tuple[OutParam, ...]:
        return tuple(slot for slot in self.slots if slot is not None)


def validate_procedure_name(name: object) -> str:
    """Return ``name`` if it is a plain, optionally schema-qualified identifier; else raise.

    ``SP_INS_WEEK_MAIN``, ``report.sp_ins_week_main`` and ``OWNER.PKG.PROC`` pass; anything
    with spaces, quotes, parentheses or semicolons raises ValueError, so the name cannot
    smuggle SQL into the call statement.
    """
    if not isinstance(name, str) or not _PROCEDURE_NAME.fullmatch(name):
        raise ValueError(
            f"procedure name {name!r} is not a plain identifier (letters, digits, _ $ #, "
            "optionally schema-qualified like owner.procedure)"
        )
    return name


def call_slots(args: Sequence[Any] = (), out: Sequence[Any] = ()) -> tuple[list[Any], list[Slot]]:
    """Split a step's ``args`` and ``out`` into bind values and parameter slots.

    ``args`` are the procedure's parameters in order. Each is a plain value (IN), a typed IN
    value ``{value: ..., type: date}``, an OUT marker ``{out: name, type: number}`` or an
    INOUT marker ``{inout: name, value: ..., type: integer}``. Each ``out`` entry adds one OUT
    parameter after the arguments: ``"name"``, ``"name:type"`` or ``{name: ..., type: ...}``.
    Types: string (default), number, integer, float, date, timestamp, clob.

    Returns (values, slots) of equal length: the value to bind for each parameter (None for
    OUT) and its slot (None for IN). Raises ValueError on a malformed entry.
    """
    if isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise ValueError(f"procedure args must be a list, got {type(args).__name__}")
    if isinstance(out, str):
        out = [out]
    if not isinstance(out, Sequence):
        raise ValueError(f"procedure out must be a list, got {type(out).__name__}")
    values: list[Any] = []
    slots: list[Slot] = []
    names: set[str] = set()
    for index, arg in enumerate(args):
        if isinstance(arg, Mapping):
            value, slot = _marker(arg, f"args[{index}]")
        else:
            value, slot = arg, None
        values.append(value)
        slots.append(slot)
    for index, spec in enumerate(out):
        values.append(None)
        slots.append(_out_spec(spec, f"out[{index}]"))
    for slot in slots:
        if slot is not None:
            if slot.name in names:
                raise ValueError(f"OUT parameter name {slot.name!r} is used twice")
            names.add(slot.name)
    return values, slots


def _marker(arg: Mapping[str, Any], where: str) -> tuple[Any, Slot]:
    keys = set(arg)
    kind = _param_type(arg.get("type", "string"), where)
    if "out" in keys and keys <= {"out", "type"}:
        return None, OutParam(_param_name(arg["out"], where), kind)
    if "inout" in keys and keys <= {"inout", "value", "type"}:
        value = convert_value(arg.get("value"), kind, where)
        return value, OutParam(_param_name(arg["inout"], where), kind, inout=True)
    if "value" in keys and keys <= {"value", "type"}:
        return convert_value(arg["value"], kind, where), None
    raise ValueError(
        f"{where}: a mapping argument must be {{value, type}} (typed IN), {{out, type}} (OUT) "
        f"or {{inout, value, type}} (INOUT), got keys {sorted(map(str, keys))}"
    )


def _out_spec(spec: Any, where: str) -> OutParam:
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"name", "type"}
        if unknown or "name" not in spec:
            raise ValueError(f"{where}: an OUT parameter is {{name, type}}, got {dict(spec)!r}")
        return OutParam(_param_name(spec["name"], where), _param_type(spec.get("type"), where))
    if isinstance(spec, str):
        name, _, kind = spec.partition(":")
        return OutParam(_param_name(name.strip(), where), _param_type(kind.strip(), where))
    raise ValueError(f"{where}: an OUT parameter is 'name', 'name:type' or {{name, type}}")


def _param_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
        raise ValueError(f"{where}: OUT parameter name {name!r} must be an identifier")
    return name


def _param_type(kind: Any, where: str) -> ParamType:
    if kind is None or kind == "":
        return "string"
    resolved = _TYPE_ALIASES.get(str(kind).strip().lower())
    if resolved is None:
        allowed = ", ".join(sorted(set(_TYPE_ALIASES.values())))
        raise ValueError(f"{where}: unknown parameter type {kind!r} (use one of {allowed})")
    return resolved


def convert_value(value: Any, kind: ParamType, where: str = "value") -> Any:
    """``value`` as the Python type a driver binds for ``kind``; None stays None.

    Dates accept ``date``/``datetime`` objects and ``YYYY-MM-DD`` or ``YYYYMMDD`` text, so a
    template such as ``{{ results.check.week_start }}`` binds as a real DATE (an Oracle DATE
    parameter given text would depend on the session's NLS_DATE_FORMAT).
    """
    if value is None:
        return None
    try:
        if kind == "date":
            if isinstance(value, datetime):
                return value.date()
            if isinstance(value, date):
                return value
            text = str(value).strip()
            if re.fullmatch(r"\d{8}", text):
                return datetime.strptime(text, "%Y%m%d").date()
            return date.fromisoformat(text[:10])
        if kind == "timestamp":
            return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        if kind == "integer":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"{value!r} is not a whole number")
            return int(value)
        if kind == "number":
            return value if isinstance(value, Decimal) else Decimal(str(value))
        if kind == "float":
            return float(value)
        return value if isinstance(value, str) else str(value)
    except (ValueError, TypeError, InvalidOperation) as exc:
        raise ValueError(f"{where}: cannot use {value!r} as {kind}: {exc}") from None


def call_statement(dialect: str, procedure: str, slots: Sequence[Slot] = ()) -> CallStatement:
    """The statement(s) calling ``procedure`` with one parameter per slot on ``dialect``.

    ``dialect`` is a SQLAlchemy dialect name: ``oracle``, ``postgresql``, ``mysql`` or
    ``mariadb``. Raises ValueError for other dialects (SQLite has no procedures) and for a
    procedure name that is not a plain identifier.

    * Oracle: ``BEGIN PROC(:1, :2); END;`` — every parameter a positional bind; OUT and
      INOUT ones are bound to driver variables (``cursor.var``) by :func:`call_procedure`.
    * PostgreSQL: ``CALL proc(:p1, NULL)`` — an OUT argument is written as NULL (PostgreSQL
      does not evaluate it); OUT and INOUT values come back as the CALL's one result row.
    * MariaDB/MySQL: ``CALL proc(:p1, @stepline_out_2)`` then ``SELECT @stepline_out_2``;
      INOUT values are first assigned with ``SET @stepline_out_N = :pN``.
    """
    validate_procedure_name(procedure)
    family = _DIALECTS.get(dialect)
    slots = tuple(slots)
    if family is None:
        hint = (
            "SQLite has no stored procedures; use stepline.sql:execute or a Python runner"
            if dialect == "sqlite"
            else "supported: oracle, postgresql, mysql, mariadb"
        )
        raise ValueError(f"cannot call a procedure on a {dialect!r} database: {hint}")
    if family == "oracle":
        binds = ", ".join(f":{n}" for n in range(1, len(slots) + 1))
        call = f"{procedure}({binds})" if slots else procedure
        return CallStatement("oracle", f"BEGIN {call}; END;", slots)
    if family == "postgresql":
        arguments = ", ".join(
            "NULL" if slot is not None and not slot.inout else f":p{n}"
            for n, slot in enumerate(slots, start=1)
        )
        return CallStatement("postgresql", f"CALL {procedure}({arguments})", slots)
    parts: list[str] = []
    before: list[str] = []
    selected: list[str] = []
    for n, slot in enumerate(slots, start=1):
        if slot is None:
            parts.append(f":p{n}")
            continue
        variable = f"@stepline_out_{n}"
        parts.append(variable)
        if slot.inout:
            before.append(f"SET {variable} = :p{n}")
        selected.append(f"{variable} AS o{len(selected)}")
    fetch = f"SELECT {', '.join(selected)}" if selected else None
    return CallStatement(
        "mysql", f"CALL {procedure}({', '.join(parts)})", slots, tuple(before), fetch
    )


# -- runners ------------------------------------------------------------------------------


def execute(ctx: StepContext) -> dict[str, Any]:
    """Run one SQL statement in a transaction on ``with.connection``.

    ``with``: ``connection`` (name), ``sql`` (named binds ``:name``), ``params`` (a mapping,
    or a list of mappings to run the statement once per entry), ``max_rows`` (default
    10,000). Returns ``{"rows": [...]}`` for a statement that returns rows (values made
    JSON-safe: Decimal → int/float/str, dates → ISO text), else ``{"rowcount": n}``.
    Committed when it returns; rolled back if it raises. A result larger than ``max_rows``
    fails the step (DoNotRetry) rather than storing a truncated result.
    """
    args = ctx.args
    name = _text_arg(args, "connection")
    sql = _text_arg(args, "sql")
    params = args.get("params") or {}
    if not isinstance(params, Mapping) and not (
        isinstance(params, list) and all(isinstance(p, Mapping) for p in params)
    ):
        raise DoNotRetry("stepline.sql:execute: 'params' must be a mapping or a list of mappings")
    max_rows = int(args.get("max_rows", DEFAULT_MAX_ROWS))
    engine = _engine(ctx, name)
    if engine.dialect.name == "oracle":
        sql = _strip_oracle_terminator(sql)
    ctx.log.info("sql execute", connection=name, statement=_first_line(sql))
    try:
        return _execute(engine, sql, params, max_rows)
    except sa.exc.DBAPIError as exc:
        raise database_error(exc, f"statement on connection {name!r}") from exc


def _execute(engine: sa.Engine, sql: str, params: Any, max_rows: int) -> dict[str, Any]:
    with engine.begin() as conn:
        result = conn.execute(sa.text(sql), params if params else None)
        if result.returns_rows:
            rows = result.mappings().fetchmany(max_rows + 1)
            result.close()
            if len(rows) > max_rows:
                raise DoNotRetry(
                    f"the query returned more than max_rows={max_rows} rows; aggregate in SQL "
                    "or raise max_rows (step results are stored in Stepline's database)"
                )
            return {"rows": [{str(k): json_safe(v) for k, v in row.items()} for row in rows]}
        return {"rowcount": result.rowcount}


def call_procedure(ctx: StepContext) -> dict[str, Any]:
    """Call a stored procedure on ``with.connection`` and commit.

    ``with``: ``connection``, ``procedure`` (plain identifier, optionally schema-qualified),
    ``args`` (list, see :func:`call_slots`), ``out`` (OUT parameters after the args).
    Returns ``{"procedure": name, "out": {name: value...}}`` with OUT/INOUT values made
    JSON-safe. On PostgreSQL the CALL runs outside an explicit transaction (autocommit) so
    that a procedure may COMMIT itself, as Oracle and MariaDB procedures commonly do.
    Configuration errors (unknown connection, bad name, unsupported database) fail the step
    at once (DoNotRetry); database errors raise DatabaseError (its message starts with the
    database's code, e.g. ORA-00060) and follow the step's retry policy (``retry.on``).
    """
    args = ctx.args
    name = _text_arg(args, "connection")
    try:
        procedure = validate_procedure_name(args.get("procedure"))
        values, slots = call_slots(args.get("args") or [], args.get("out") or [])
    except ValueError as exc:
        raise DoNotRetry(f"stepline.sql:call_procedure: {exc}") from None
    engine = _engine(ctx, name)
    try:
        plan = call_statement(engine.dialect.name, procedure, slots)
    except ValueError as exc:
        raise DoNotRetry(f"connection {name!r}: {exc}") from None
    ctx.log.info("calling procedure", connection=name, procedure=procedure, dialect=plan.dialect)
    try:
        out = run_call(engine, plan, values)
    except sa.exc.DBAPIError as exc:
        raise database_error(exc, f"procedure {procedure} on connection {name!r}") from exc
    return {"procedure": procedure, "out": {key: json_safe(v) for key, v in out.items()}}


def run_call(engine: sa.Engine, plan: CallStatement, values: Sequence[Any]) -> dict[str, Any]:
    """Execute ``plan`` with ``values`` (one per slot) and commit; return the OUT values."""
    if len(values) != len(plan.slots):
        raise ValueError(f"{len(values)} values for {len(plan.slots)} procedure parameters")
    if plan.dialect == "oracle":
        return _call_oracle(engine, plan, values)
    binds = {f"p{n}": v for n, v in enumerate(values, start=1)}
    if plan.dialect == "postgresql":
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            result = conn.execute(sa.text(plan.sql), _used(plan.sql, binds))
            row = result.mappings().first() if result.returns_rows else None
            result.close()
        return _out_values(plan.out, row)
    with engine.begin() as conn:
        for statement in plan.before:
            conn.execute(sa.text(statement), _used(statement, binds))
        conn.execute(sa.text(plan.sql), _used(plan.sql, binds)).close()
        row = conn.execute(sa.text(plan.fetch)).mappings().first() if plan.fetch else None
    if row is None:
        return {}
    return {slot.name: row[f"o{i}"] for i, slot in enumerate(plan.out)}


def _call_oracle(engine: sa.Engine, plan: CallStatement, values: Sequence[Any]) -> dict[str, Any]:
    # OUT parameters need driver variables (cursor.var), so this uses the raw connection.
    raw = engine.raw_connection()
    try:
        return oracle_call(raw, plan, values)
    finally:
        raw.close()


def oracle_call(connection: Any, plan: CallStatement, values: Sequence[Any]) -> dict[str, Any]:
    """Run an Oracle ``plan`` on a connection with python-oracledb's API, then commit.

    IN values bind positionally; OUT and INOUT slots bind ``cursor.var`` variables whose
    values are returned. Driver errors become DatabaseError (ORA code first), rolled back.
    """
    raw = connection
    try:
        cursor = raw.cursor()
        try:
            binds: list[Any] = []
            variables: dict[str, Any] = {}
            for slot, value in zip(plan.slots, values, strict=True):
                if slot is None:
                    binds.append(value)
                    continue
                variable = cursor.var(_oracle_type(slot.type))
                if slot.inout:
                    variable.setvalue(0, value)
                variables[slot.name] = variable
                binds.append(variable)
            cursor.execute(plan.sql, binds)
            out = {name: _read_lob(var.getvalue()) for name, var in variables.items()}
        finally:
            cursor.close()
        raw.commit()
        return out
    except BaseException as exc:
        raw.rollback()
        if isinstance(exc, sa.exc.DBAPIError) or type(exc).__module__.startswith("oracledb"):
            raise database_error(exc, f"calling {plan.sql}") from exc
        raise


def _oracle_type(kind: ParamType) -> Any:
    if kind == "clob":
        import oracledb

        return oracledb.DB_TYPE_CLOB
    return {
        "string": str,
        "number": Decimal,
        "integer": int,
        "float": float,
        "date": date,
        "timestamp": datetime,
    }[kind]


def _read_lob(value: Any) -> Any:
    # A CLOB OUT value is a LOB handle, only valid while the connection is open.
    read = getattr(value, "read", None)
    return read() if callable(read) else value


def _used(statement: str, binds: Mapping[str, Any]) -> dict[str, Any]:
    # text() refuses extra bind values, and an OUT slot has none in the SQL.
    return {k: v for k, v in binds.items() if re.search(rf":{k}\b", statement)}


def _out_values(out: Sequence[OutParam], row: sa.RowMapping | None) -> dict[str, Any]:
    if row is None or not out:
        return {}
    values = list(row.values())
    if len(values) == len(out):
        return {slot.name: value for slot, value in zip(out, values, strict=True)}
    # The procedure's OUT list differs from the declared one: report what it returned.
    return {str(k): v for k, v in row.items()}


# -- helpers ------------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """``value`` with database types turned into JSON types, recursively.

    Decimal → int if whole, else float if that is exact, else str; non-finite numbers → None;
    date/datetime/time → ISO text; timedelta → seconds; bytes → base64 text; UUID → str.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        if value == value.to_integral_value():
            return int(value)
        as_float = float(value)
        return as_float if Decimal(repr(as_float)) == value else str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    return str(value)


def _engine(ctx: StepContext, name: str) -> sa.Engine:
    try:
        return connections_for(ctx).engine(name)
    except UnknownConnection as exc:
        raise DoNotRetry(str(exc)) from None


def _text_arg(args: Mapping[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DoNotRetry(f"missing 'with.{key}': a non-empty string is required")
    return value


def _strip_oracle_terminator(sql: str) -> str:
    # Oracle rejects a trailing ';' after plain SQL (ORA-00933/ORA-00911) but a PL/SQL
    # block needs its final 'END;'.
    stripped = sql.rstrip()
    if stripped.endswith(";") and not re.search(r"\bEND\s*;$", stripped, re.IGNORECASE):
        return stripped[:-1]
    return stripped


def _first_line(sql: str) -> str:
    line = sql.strip().splitlines()[0] if sql.strip() else ""
    return line if len(line) <= 120 else line[:117] + "..."


# Runner names stay under stepline.sql; imported last, as they use the helpers above.
from stepline.sql_blocks import call_function, run_block  # noqa: E402
