"""The built-in runners' pure parts, without servers: call statements per dialect, argument
parsing, identifier validation, HTTP retry decisions, connections, and the weekly report
example's conversions (KMA grid, week, payload parsing, SQL script splitting)."""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from stepline import DoNotRetry, StepContext
from stepline.connections import (
    Connections,
    UnknownConnection,
    default_connections,
    reset_default_connections,
)
from stepline.http import (
    is_retryable_error,
    is_retryable_status,
    parse_retry_after,
    request,
    retry_delay,
)
from stepline.notify import default_message, webhook
from stepline.settings import Secret
from stepline.sql import (
    CallStatement,
    OutParam,
    call_slots,
    call_statement,
    convert_value,
    json_safe,
    run_call,
    validate_procedure_name,
)

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    # The example's runners are imported from the repository root, as `stepline run` does.
    sys.path.insert(0, str(REPO))

from examples.weekly_report import weekly_report as wr  # noqa: E402
from examples.weekly_report.kma_grid import grid_to_latlon, latlon_to_grid  # noqa: E402
from examples.weekly_report.sample_api import kma_payload, open_meteo_payload  # noqa: E402
from examples.weekly_report.setup_db import schema_statements, split_sql_script  # noqa: E402


def ctx(args: dict[str, Any] | None = None, **fields: Any) -> StepContext:
    values: dict[str, Any] = {
        "batch": "weekly_report",
        "instance_id": 7,
        "step": "alert_admin",
        "attempt": 1,
        "params": {},
        "results": {},
        "args": args or {},
        "log": structlog.get_logger("test"),
    }
    values.update(fields)
    return StepContext(**values)


# -- stepline.sql: call statements ------------------------------------------------------------


def test_oracle_call_is_an_anonymous_block_with_positional_binds() -> None:
    values, slots = call_slots(["WEEK", None])
    plan = call_statement("oracle", "SP_INS_WEEK_MAIN", slots)
    assert plan.sql == "BEGIN SP_INS_WEEK_MAIN(:1, :2); END;"
    assert values == ["WEEK", None]
    assert plan.out == () and plan.fetch is None


def test_oracle_call_binds_out_parameters_in_place() -> None:
    values, slots = call_slots(
        ["WEEK", {"out": "rows_written", "type": "integer"}, "2024-06-03"], out=["message"]
    )
    plan = call_statement("oracle", "report.PKG_WEEK.SP_MAIN", slots)
    assert plan.sql == "BEGIN report.PKG_WEEK.SP_MAIN(:1, :2, :3, :4); END;"
    assert values == ["WEEK", None, "2024-06-03", None]
    assert plan.out == (OutParam("rows_written", "integer"), OutParam("message", "string"))


def test_oracle_call_without_arguments_has_no_parentheses() -> None:
    assert call_statement("oracle", "SP_PURGE", []).sql == "BEGIN SP_PURGE; END;"


def test_postgresql_call_writes_null_for_out_and_binds_inout() -> None:
    values, slots = call_slots(
        ["WEEK", {"inout": "counter", "value": 5, "type": "integer"}], out=["total:number"]
    )
    plan = call_statement("postgresql", "sp_ins_week_main", slots)
    assert plan.sql == "CALL sp_ins_week_main(:p1, :p2, NULL)"
    assert values == ["WEEK", 5, None]
    assert [o.name for o in plan.out] == ["counter", "total"]
    assert plan.before == () and plan.fetch is None


@pytest.mark.parametrize("dialect", ["mysql", "mariadb"])
def test_mariadb_call_uses_session_variables_for_out(dialect: str) -> None:
    _, slots = call_slots(["WEEK", {"inout": "n", "value": 1}], out=["message"])
    plan = call_statement(dialect, "SP_INS_WEEK_MAIN", slots)
    assert plan.dialect == "mysql"
    assert plan.before == ("SET @stepline_out_2 = :p2",)
    assert plan.sql == "CALL SP_INS_WEEK_MAIN(:p1, @stepline_out_2, @stepline_out_3)"
    assert plan.fetch == "SELECT @stepline_out_2 AS o0, @stepline_out_3 AS o1"


def test_mariadb_call_without_out_fetches_nothing() -> None:
    plan = call_statement("mariadb", "SP_X", [None, None])
    assert plan.sql == "CALL SP_X(:p1, :p2)" and plan.fetch is None


def test_sqlite_and_unknown_dialects_are_refused_with_advice() -> None:
    with pytest.raises(ValueError, match="SQLite has no stored procedures"):
        call_statement("sqlite", "SP_X", [])
    with pytest.raises(ValueError, match="supported: oracle, postgresql"):
        call_statement("mssql", "SP_X", [])


@pytest.mark.parametrize(
    "name", ["SP_INS_WEEK_MAIN", "report.sp_ins_week_main", "OWNER.PKG.PROC", "SYS$X#1", "_p"]
)
def test_plain_and_qualified_procedure_names_pass(name: str) -> None:
    assert validate_procedure_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "SP_X; DROP TABLE TA_FARM",
        "SP_X(1)",
        'SP_X"',
        "sp x",
        "1sp",
        "a.b.c.d",
        "sp--",
        "",
        None,
        "sp.",
        "x" * 129,
    ],
)
def test_names_that_could_inject_sql_are_refused(name: Any) -> None:
    with pytest.raises(ValueError, match="not a plain identifier"):
        validate_procedure_name(name)
    with pytest.raises(ValueError):
        call_statement("postgresql", name, [])


def test_argument_markers_are_validated() -> None:
    with pytest.raises(ValueError, match=r"args\[0\]: a mapping argument must be"):
        call_slots([{"foo": 1}])
    with pytest.raises(ValueError, match="unknown parameter type 'blob'"):
        call_slots([], out=["x:blob"])
    with pytest.raises(ValueError, match="used twice"):
        call_slots([{"out": "x"}], out=["x"])
    with pytest.raises(ValueError, match="must be an identifier"):
        call_slots([], out=["bad name"])
    with pytest.raises(ValueError, match="must be a list"):
        call_slots("WEEK")


def test_typed_values_are_converted_for_the_driver() -> None:
    values, _ = call_slots(
        [
            {"value": "2024-06-05", "type": "date"},
            {"value": "20240605", "type": "date"},
            {"value": "12.50", "type": "number"},
            {"value": "3", "type": "integer"},
            {"value": None, "type": "date"},
        ]
    )
    assert values == [date(2024, 6, 5), date(2024, 6, 5), Decimal("12.50"), 3, None]
    assert convert_value("2024-06-05T01:02:03", "timestamp") == datetime(2024, 6, 5, 1, 2, 3)
    with pytest.raises(ValueError, match="cannot use 'soon' as date"):
        convert_value("soon", "date")
    with pytest.raises(ValueError, match="not a whole number"):
        convert_value(1.5, "integer")


class FakeVar:
    def __init__(self, kind: Any) -> None:
        self.kind = kind
        self.value: Any = None

    def setvalue(self, index: int, value: Any) -> None:
        self.value = value

    def getvalue(self) -> Any:
        return self.value


class FakeOracle:
    """Just enough of an oracledb connection for the OUT-parameter path."""

    def __init__(self, outputs: dict[int, Any]) -> None:
        self.outputs = outputs
        self.executed: list[tuple[str, list[Any]]] = []
        self.committed = self.rolled_back = self.closed = False

    def raw_connection(self) -> FakeOracle:
        return self

    def cursor(self) -> FakeOracle:
        return self

    def var(self, kind: Any) -> FakeVar:
        return FakeVar(kind)

    def execute(self, sql: str, binds: list[Any]) -> None:
        self.executed.append((sql, binds))
        for position, value in self.outputs.items():
            binds[position].value = value

    def commit(self) -> None:
        self.committed = True

    def rollback(self) -> None:
        self.rolled_back = True

    def close(self) -> None:
        self.closed = True


def test_oracle_out_parameters_are_bound_as_cursor_variables_and_returned() -> None:
    values, slots = call_slots(
        ["WEEK", {"inout": "n", "value": 2, "type": "integer"}], out=["rows:number"]
    )
    plan = call_statement("oracle", "SP_X", slots)
    fake = FakeOracle({1: 3, 2: Decimal("45")})
    out = run_call(fake, plan, values)  # type: ignore[arg-type]
    sql, binds = fake.executed[0]
    assert sql == "BEGIN SP_X(:1, :2, :3); END;"
    assert binds[0] == "WEEK"
    assert isinstance(binds[1], FakeVar) and binds[1].kind is int
    assert isinstance(binds[2], FakeVar) and binds[2].kind is Decimal
    assert out == {"n": 3, "rows": Decimal("45")}
    assert fake.committed and fake.closed and not fake.rolled_back


def test_oracle_call_rolls_back_on_error() -> None:
    class Failing(FakeOracle):
        def execute(self, sql: str, binds: list[Any]) -> None:
            raise RuntimeError("ORA-06550")

    fake = Failing({})
    with pytest.raises(RuntimeError, match="ORA-06550"):
        run_call(fake, CallStatement("oracle", "BEGIN SP_X; END;", ()), [])  # type: ignore[arg-type]
    assert fake.rolled_back and fake.closed and not fake.committed


def test_json_safe_converts_database_types() -> None:
    value = {
        "int": Decimal("45"),
        "exact": Decimal("12.5"),
        "long": Decimal("0.1000000000000000000001"),
        "nan": Decimal("NaN"),
        "day": date(2024, 6, 3),
        "at": datetime(2024, 6, 3, 2, 0, tzinfo=UTC),
        "gap": timedelta(minutes=1),
        "raw": b"\x00\x01",
        "nested": [Decimal("1.25"), (float("inf"),)],
    }
    assert json_safe(value) == {
        "int": 45,
        "exact": 12.5,
        "long": "0.1000000000000000000001",
        "nan": None,
        "day": "2024-06-03",
        "at": "2024-06-03T02:00:00+00:00",
        "gap": 60.0,
        "raw": "AAE=",
        "nested": [1.25, [None]],
    }


# -- stepline.http: retry decisions -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry"),
    [(200, False), (400, False), (401, False), (404, False), (429, True), (500, True), (503, True)],
)
def test_retryable_statuses(status: int, retry: bool) -> None:
    assert is_retryable_status(status) is retry


def test_transient_transport_errors_are_retried_and_bugs_are_not() -> None:
    assert is_retryable_error(httpx.ReadTimeout("slow"))
    assert is_retryable_error(httpx.ConnectError("refused"))
    assert is_retryable_error(httpx.RemoteProtocolError("reset"))
    assert not is_retryable_error(httpx.UnsupportedProtocol("ftp"))
    assert not is_retryable_error(httpx.LocalProtocolError("bad header"))


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2024, 6, 3, 2, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None and parse_retry_after(" ") is None


def test_backoff_is_exponential_capped_and_yields_to_retry_after() -> None:
    assert [retry_delay(n, backoff=1, max_backoff=5) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]
    assert retry_delay(10_000, backoff=1, max_backoff=30) == 30  # no overflow
    assert retry_delay(1, backoff=1, retry_after=12, retry_after_cap=60) == 12
    assert retry_delay(1, backoff=1, retry_after=3600, retry_after_cap=60) == 60
    assert retry_delay(3, backoff=1, retry_after=0) == 0


def test_request_refuses_unknown_arguments_and_missing_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(DoNotRetry, match=r"unknown argument.*header"):
        request(ctx({"url": "http://127.0.0.1:9/", "header": {}}))
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(DoNotRetry, match="environment variable NO_SUCH_KEY_VAR is not set"):
        request(ctx({"url": "http://127.0.0.1:9/", "params": {"key": "${NO_SUCH_KEY_VAR}"}}))
    with pytest.raises(DoNotRetry, match="invalid duration"):
        request(ctx({"url": "http://127.0.0.1:9/", "timeout": "soon"}))


def test_an_unusable_url_fails_at_once_without_echoing_its_secret() -> None:
    with pytest.raises(DoNotRetry) as caught:
        request(ctx({"url": "htp://example.com/x?serviceKey=S3CRET-KEY", "retries": 3}))
    assert "UnsupportedProtocol" in str(caught.value)
    assert "S3CRET-KEY" not in str(caught.value) and "serviceKey=***" in str(caught.value)


# -- stepline.notify -------------------------------------------------------------------------


def test_default_message_names_the_instance_and_how_to_resume() -> None:
    subject, text = default_message(ctx(results={"collect_stats": {"rows": 3}}))
    assert "weekly_report instance 7" in subject
    assert "collect_stats" in text and "stepline retry 7" in text


def test_webhook_configuration_errors_fail_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEEKLY_ALERT_WEBHOOK_URL", raising=False)
    with pytest.raises(DoNotRetry, match="WEEKLY_ALERT_WEBHOOK_URL is not set"):
        webhook(ctx({"url": "${WEEKLY_ALERT_WEBHOOK_URL}"}))
    with pytest.raises(DoNotRetry, match="unknown argument"):
        webhook(ctx({"url": "http://127.0.0.1:9/", "channel": "#ops"}))


# -- stepline.connections ----------------------------------------------------------------------


def test_connection_names_ignore_case_and_engines_are_created_once() -> None:
    connections = Connections({"Report": "sqlite://", "ARCHIVE": Secret("sqlite://")})
    try:
        assert connections.names() == ["archive", "report"]
        assert "REPORT" in connections and "other" not in connections
        engine = connections.engine("report")
        assert connections["Report"] is engine
        assert connections.dialect("report") == "sqlite"
    finally:
        connections.dispose()
    with pytest.raises(ValueError, match="configured twice"):
        Connections({"a": "sqlite://", "A": "sqlite://"})


def test_unknown_connection_names_what_is_configured_and_how_to_add_it() -> None:
    connections = Connections({"report": "sqlite://"})
    with pytest.raises(KeyError) as caught:
        connections.engine("warehouse")
    assert isinstance(caught.value, UnknownConnection)
    message = str(caught.value)
    assert "'warehouse' is not configured (configured: report)" in message
    assert "STEPLINE_CONNECTIONS__WAREHOUSE=" in message


def test_repr_and_secrets_never_show_a_password_in_the_open() -> None:
    connections = Connections(
        {"report": "postgresql+psycopg://batch:pa55-w0rd@db.example:5432/farm?sslmode=require"}
    )
    assert "pa55-w0rd" not in repr(connections)
    assert "batch:***@db.example" in repr(connections)
    assert connections.secrets() == ["pa55-w0rd"]


def test_default_connections_come_from_settings_and_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPLINE_CONNECTIONS__REPORT", "sqlite://")
    reset_default_connections()
    try:
        first = default_connections()
        assert first.names() == ["report"] and default_connections() is first
        monkeypatch.setenv("STEPLINE_CONNECTIONS__OTHER", "sqlite://")
        reset_default_connections()
        assert default_connections().names() == ["other", "report"]
    finally:
        reset_default_connections()


# -- the weekly report example ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("place", "lat", "lon", "grid"),
    [
        ("Seoul", 37.5665, 126.9780, (60, 127)),
        ("Busan", 35.1796, 129.0756, (98, 76)),
        ("Jeju", 33.4996, 126.5312, (53, 38)),
        ("Gwangju", 35.1595, 126.8526, (58, 74)),
    ],
)
def test_kma_grid_conversion(place: str, lat: float, lon: float, grid: tuple[int, int]) -> None:
    assert latlon_to_grid(lat, lon) == grid, place
    back_lat, back_lon = grid_to_latlon(*grid)
    assert abs(back_lat - lat) < 0.05 and abs(back_lon - lon) < 0.05  # within one 5 km cell


def test_kma_grid_refuses_points_outside_korea() -> None:
    with pytest.raises(ValueError, match="outside the KMA forecast grid"):
        latlon_to_grid(52.52, 13.41)  # Berlin


def test_kma_base_time_is_the_latest_published_forecast() -> None:
    assert wr.kma_base_time(datetime(2024, 6, 3, 2, 0)) == ("20240602", "2300")
    assert wr.kma_base_time(datetime(2024, 6, 3, 2, 20)) == ("20240603", "0200")
    assert wr.kma_base_time(datetime(2024, 6, 3, 23, 59)) == ("20240603", "2300")


@pytest.mark.parametrize(
    ("text", "mm"),
    [
        ("강수없음", 0.0),
        ("1mm 미만", 0.5),
        ("1.0mm", 1.0),
        ("30.0~50.0mm", 30.0),
        ("50.0mm 이상", 50.0),
    ],
)
def test_kma_precipitation_text(text: str, mm: float) -> None:
    assert wr.parse_kma_precipitation(text) == mm


def test_kma_answer_becomes_one_row_per_forecast_day() -> None:
    week = wr.report_week("WEEK", "2024-06-05", date(2024, 6, 20))
    rows = wr.kma_rows(kma_payload(60, 127, "20240610", "0500"), "F001", week)
    assert [r["obs_date"] for r in rows] == [
        date(2024, 6, 10),
        date(2024, 6, 11),
        date(2024, 6, 12),
    ]
    assert all(r["week_start"] == date(2024, 6, 3) and r["data_source"] == "KMA" for r in rows)
    assert rows[0]["temp_min"] < rows[0]["temp_avg"] < rows[0]["temp_max"]
    failing = {"response": {"header": {"resultCode": "30", "resultMsg": "SERVICE_KEY_ERROR"}}}
    with pytest.raises(ValueError, match="SERVICE_KEY_ERROR"):
        wr.kma_rows(failing, "F001", week)


def test_open_meteo_answer_becomes_one_row_per_day() -> None:
    week = wr.report_week("WEEK", "2024-06-05", date(2024, 6, 20))
    payload = open_meteo_payload(37.5665, 126.978, week.start, week.end)
    rows = wr.open_meteo_rows(payload, "F001", week)
    assert len(rows) == 7 and rows[0]["obs_date"] == date(2024, 6, 3)
    del payload["daily"]["temperature_2m_mean"]  # older answers: mean from max and min
    rows = wr.open_meteo_rows(payload, "F001", week)
    assert rows[0]["temp_avg"] == round((rows[0]["temp_max"] + rows[0]["temp_min"]) / 2, 2)
    with pytest.raises(ValueError, match="no daily data"):
        wr.open_meteo_rows({"error": True, "reason": "bad variable"}, "F001", week)


def test_report_week_is_monday_to_sunday_and_defaults_to_last_week() -> None:
    week = wr.report_week("WEEK", None, date(2024, 6, 10))  # a Monday
    assert (week.start, week.end) == (date(2024, 6, 3), date(2024, 6, 9))
    assert wr.report_week("week", "20240609", date(2030, 1, 1)).start == date(2024, 6, 3)
    with pytest.raises(ValueError, match="only WEEK"):
        wr.report_week("MONTH", None, date(2024, 6, 10))


def test_statistics_field_mapping() -> None:
    mapping = wr.parse_field_mapping("items=response.body.items.item,key=code,value=amt")
    payload = {
        "response": {
            "body": {
                "items": {
                    "item": [
                        {"code": "PIG", "amt": "5,123.5"},
                        {"code": "COW", "amt": ""},
                        {"code": "HEN", "amt": 7},
                    ]
                }
            }
        }
    }
    assert wr.extract_stats(payload, mapping) == {"PIG": 5123.5, "HEN": 7.0}
    one = {"response": {"body": {"items": {"item": {"code": "PIG", "amt": 1}}}}}
    assert wr.extract_stats(one, mapping) == {"PIG": 1.0}
    assert wr.parse_field_mapping('{"key": "k", "value": "v"}')["items"] == ""
    with pytest.raises(ValueError, match="lacks value"):
        wr.parse_field_mapping("items=x,key=k")


def test_oracle_upsert_is_a_merge_on_the_primary_key() -> None:
    sql = wr.oracle_merge_sql(
        wr.TM_WEATHER,
        ["farm_id", "week_start", "obs_date"],
        ["farm_id", "week_start", "obs_date", "temp_avg"],
    )
    assert sql == (
        "MERGE INTO TM_WEATHER t USING (SELECT :farm_id AS farm_id, :week_start AS week_start, "
        ":obs_date AS obs_date, :temp_avg AS temp_avg FROM dual) s ON (t.farm_id = s.farm_id "
        "AND t.week_start = s.week_start AND t.obs_date = s.obs_date) WHEN MATCHED THEN UPDATE "
        "SET t.temp_avg = s.temp_avg WHEN NOT MATCHED THEN INSERT (farm_id, week_start, "
        "obs_date, temp_avg) VALUES (s.farm_id, s.week_start, s.obs_date, s.temp_avg)"
    )


def test_sql_scripts_split_like_the_databases_own_clients() -> None:
    pg = split_sql_script("CREATE T (a int); -- x;\nCREATE F() AS $f$ a; b; $f$;\n", "postgresql")
    assert pg == ["CREATE T (a int)", "CREATE F() AS $f$ a; b; $f$"]
    maria = split_sql_script(
        "DROP P;\nDELIMITER //\nCREATE P() BEGIN a; b; END //\nDELIMITER ;\nSELECT ';';",
        "mariadb",
    )
    assert maria == ["DROP P", "CREATE P() BEGIN a; b; END", "SELECT ';'"]
    oracle = split_sql_script(
        "CREATE TABLE T (A NUMBER);\nCREATE OR REPLACE PROCEDURE P IS\nBEGIN\n  NULL;\nEND P;\n/\n",
        "oracle",
    )
    assert oracle == [
        "CREATE TABLE T (A NUMBER)",
        "CREATE OR REPLACE PROCEDURE P IS\nBEGIN\n  NULL;\nEND P;",
    ]


def test_every_schema_file_defines_the_tables_and_the_procedure() -> None:
    tables = ["TA_FARM", "TA_STATS_DATA", "TM_WEATHER", "TS_INS_JOB_LOG", "TR_WEEKLY_FARM_REPORT"]
    for dialect in ("postgresql", "mariadb", "oracle", "sqlite"):
        text = "\n".join(schema_statements(dialect)).upper()
        for table in tables:
            assert f"CREATE TABLE {table}" in text or f"EXISTS {table}" in text, (dialect, table)
        if dialect != "sqlite":
            assert "PROCEDURE SP_INS_WEEK_MAIN" in text, dialect
    oracle = schema_statements("oracle")
    # never CREATE OR REPLACE: the real SP_INS_WEEK_MAIN of a production schema is safe
    assert oracle[-1].startswith("CREATE PROCEDURE SP_INS_WEEK_MAIN")
    for dialect in ("postgresql", "mariadb", "oracle"):
        text = "\n".join(schema_statements(dialect)).upper()
        assert "OR REPLACE" not in text and "DROP " not in text, dialect
    assert oracle[-1].endswith("END SP_INS_WEEK_MAIN;")
    assert "PRAGMA AUTONOMOUS_TRANSACTION" in oracle[-2]
