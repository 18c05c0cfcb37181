"""stepline.sql on Oracle, against python-oracledb's API with a fake only at the driver.

No Oracle server runs here. ``FakeOracle`` implements the part of python-oracledb's
Connection/Cursor/Var contract the runners use (positional and named binds, ``var()``,
``callfunc``, ``commit``/``rollback``) and is as strict as the driver: a bind count or name
that does not match the statement fails, as ORA-01008 / DPY-4008 would. Errors it raises
are real ``oracledb.DatabaseError`` objects. What is verified: the calls we make and how we
read the answers; not Oracle's execution of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

import oracledb
import pytest
from oracledb import errors

from stepline.core.context import DoNotRetry
from stepline.engine.execution import error_identifiers
from stepline.sql import DatabaseError, call_slots, call_statement, oracle_call
from stepline.sql_blocks import oracle_block, oracle_function


def ora(message: str) -> oracledb.DatabaseError:
    return oracledb.DatabaseError(errors._Error(message))


class FakeVar:
    def __init__(self, typ: Any) -> None:
        self.type = typ
        self.value: Any = None

    def setvalue(self, pos: int, value: Any) -> None:
        assert pos == 0
        self.value = value

    def getvalue(self, pos: int = 0) -> Any:
        return self.value


class FakeLob:
    def __init__(self, text: str) -> None:
        self.text = text

    def read(self) -> str:
        return self.text


class FakeCursor:
    def __init__(self, db: FakeOracle, rows: list[tuple[Any, ...]] | None = None) -> None:
        self.db = db
        self.rows = rows or []
        self.description = [(c.upper(), None) for c in db.columns] if rows is not None else None
        self.closed = False

    def var(self, typ: Any) -> FakeVar:
        assert typ in (str, int, float, Decimal, date, oracledb.DB_TYPE_CLOB), typ
        return FakeVar(typ)

    def execute(self, sql: str, binds: Any = None) -> None:
        if isinstance(binds, list):
            used = re.findall(r":(\d+)", sql)
            if len(used) != len(binds):
                raise ora("ORA-01008: not all variables bound")
            call = re.fullmatch(r"BEGIN ([\w.$#]+)(?:\((.*)\))?; END;", sql)
            assert call, sql
            self.db.calls.append((call.group(1), binds))
            self.db.procedures[call.group(1)](*binds)
        else:
            names = set(re.findall(r"(?<!:):(\w+)", sql))
            if set(binds) - names:
                raise oracledb.NotSupportedError(
                    errors._Error(f"DPY-4008: no bind placeholder named {set(binds) - names}")
                )
            if names - set(binds):
                raise ora("ORA-01008: not all variables bound")
            self.db.blocks[sql](binds)

    def callfunc(self, name: str, return_type: Any, parameters: list[Any]) -> Any:
        assert isinstance(parameters, list)
        self.db.calls.append((name, parameters))
        value = self.db.functions[name](*parameters)
        if return_type is oracledb.DB_TYPE_CURSOR:
            return FakeCursor(self.db, value)
        return value

    def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        taken, self.rows = self.rows[:size], self.rows[size:]
        return taken

    def close(self) -> None:
        self.closed = True


class FakeOracle:
    """One connection of a pretend database: procedures, blocks and functions by name."""

    def __init__(self) -> None:
        self.procedures: dict[str, Callable[..., None]] = {}
        self.blocks: dict[str, Callable[[dict[str, Any]], None]] = {}
        self.functions: dict[str, Callable[..., Any]] = {}
        self.columns: list[str] = []
        self.calls: list[tuple[str, list[Any]]] = []
        self.committed = 0
        self.rolled_back = 0

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def commit(self) -> None:
        self.committed += 1

    def rollback(self) -> None:
        self.rolled_back += 1


def test_a_procedure_with_in_out_and_inout_parameters() -> None:
    db = FakeOracle()

    def bump(name: str, day: date, counter: FakeVar, message: FakeVar, text: FakeVar) -> None:
        counter.setvalue(0, counter.getvalue() + 1)
        message.setvalue(0, f"hello {name} on {day.isoformat()}")
        text.setvalue(0, FakeLob("a long text"))

    db.procedures["REPORT.SP_BUMP"] = bump
    values, slots = call_slots(
        [
            "WEEK",
            {"value": "2024-06-03", "type": "date"},
            {"inout": "n", "value": 4, "type": "int"},
        ],
        ["msg", "text:clob"],
    )
    plan = call_statement("oracle", "REPORT.SP_BUMP", slots)
    assert plan.sql == "BEGIN REPORT.SP_BUMP(:1, :2, :3, :4, :5); END;"
    out = oracle_call(db, plan, values)
    assert out == {"n": 5, "msg": "hello WEEK on 2024-06-03", "text": "a long text"}
    assert db.calls[0][1][:2] == ["WEEK", date(2024, 6, 3)]  # a real DATE, not NLS text
    assert (db.committed, db.rolled_back) == (1, 0)


def test_the_seed_call_binds_week_and_null() -> None:
    db = FakeOracle()
    seen: list[Any] = []
    db.procedures["SP_INS_WEEK_MAIN"] = lambda period, base: seen.extend([period, base])
    values, slots = call_slots(["WEEK", None])
    oracle_call(db, call_statement("oracle", "SP_INS_WEEK_MAIN", slots), values)
    assert seen == ["WEEK", None]


def test_an_ora_error_keeps_its_code_and_rolls_back() -> None:
    db = FakeOracle()

    def deadlock(_: Any) -> None:
        raise ora("ORA-00060: deadlock detected while waiting for resource")

    db.procedures["SP_X"] = deadlock
    values, slots = call_slots(["a"])
    with pytest.raises(DatabaseError) as caught:
        oracle_call(db, call_statement("oracle", "SP_X", slots), values)
    error = caught.value
    assert error.code == "ORA-00060"
    assert str(error).startswith("ORA-00060: deadlock detected")
    assert isinstance(error.__cause__, oracledb.DatabaseError)
    assert (db.committed, db.rolled_back) == (0, 1)
    assert "ORA-00060" in error_identifiers(error)  # what retry: {on: [...]} matches


def test_a_plsql_block_with_named_binds_and_out_values() -> None:
    db = FakeOracle()
    block = "BEGIN pkg.refresh(:week, :rows_written); END;"

    def refresh(binds: dict[str, Any]) -> None:
        assert binds["week"] == "2024-06-03"
        binds["rows_written"].setvalue(0, 42)

    db.blocks[block] = refresh
    assert oracle_block(db, block, {"week": "2024-06-03"}, [("rows_written", "integer")]) == {
        "rows_written": 42
    }
    assert db.committed == 1
    with pytest.raises(DatabaseError, match="DPY-4008"):
        oracle_block(db, block, {"week": "x", "extra": 1}, [("rows_written", "integer")])
    assert db.rolled_back == 1


def test_a_function_returning_a_value_or_a_cursor_with_a_row_cap() -> None:
    db = FakeOracle()
    db.functions["PKG.COUNT_FARMS"] = lambda kind: Decimal(5) if kind == "PIG" else Decimal(0)
    assert oracle_function(db, "PKG.COUNT_FARMS", ["PIG"], "value", "number", 10) == 5
    db.columns = ["farm_id", "lat"]
    db.functions["PKG.FARMS"] = lambda: [("F001", Decimal("37.5")), ("F002", Decimal("36.6"))]
    rows = oracle_function(db, "PKG.FARMS", [], "cursor", "string", 10)
    assert rows == [
        {"farm_id": "F001", "lat": Decimal("37.5")},
        {"farm_id": "F002", "lat": Decimal("36.6")},
    ]
    with pytest.raises(DoNotRetry, match="more than max_rows=1"):
        oracle_function(db, "PKG.FARMS", [], "cursor", "string", 1)


def test_a_missing_function_is_an_ora_error_with_its_code() -> None:
    db = FakeOracle()

    def missing(*_: Any) -> Any:
        raise ora("ORA-06550: line 1, column 7: PLS-00201: identifier 'NOPE' must be declared")

    db.functions["NOPE"] = missing
    with pytest.raises(DatabaseError) as caught:
        oracle_function(db, "NOPE", [], "value", "string", 10)
    assert caught.value.code == "ORA-06550"
    assert {"ORA-06550", "PLS-00201", "DatabaseError"} <= set(error_identifiers(caught.value))
