"""The weekly farm report example end to end, through the engine, on real databases.

The business database (TA_*, TM_WEATHER, TS_INS_JOB_LOG, the report table and
SP_INS_WEEK_MAIN) is a fresh PostgreSQL or MariaDB database; the statistics API, the weather
API and the alert webhook are one local HTTP server (pytest-httpserver) whose answers come
from the example's sample_api payloads. Stepline's own tables are in SQLite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
import yaml
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from databases import create_database, drop_database
from stepline import InstanceStatus, StepContext, StepStatus
from stepline.connections import Connections, reset_default_connections
from stepline.core.loader import parse_definition
from stepline.service import Stepline
from stepline.sql import DatabaseError, call_procedure
from stepline.stores.base import InstanceRecord, StepResultRecord

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    # Runners are "examples.weekly_report.weekly_report:...", imported from the repo root.
    sys.path.insert(0, str(REPO))

from examples.weekly_report.sample_api import (  # noqa: E402
    STAT_KEYS,
    kma_payload,
    open_meteo_payload,
    stats_payload,
)
from examples.weekly_report.setup_db import SAMPLE_FARMS, apply_schema, seed_farms  # noqa: E402

EXAMPLE = REPO / "examples" / "weekly_report"
STATS_KEY = "stats-KEY-5ecret-77"
BASE_DATE = "2024-06-05"  # a Wednesday: the report week is Monday 2024-06-03 .. 2024-06-09
WEEK_START = date(2024, 6, 3)
FARMS = [*SAMPLE_FARMS, {"farm_id": "F006", "farm_name": "Busan", "lat": 35.1796, "lon": 129.0756}]
FARM_BY_LAT = {f"{farm['lat']:.4f}": str(farm["farm_id"]) for farm in FARMS}
ITEMS_PER_FARM = 6 + len(STAT_KEYS)  # six weather aggregates and one row per statistic


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    return ("127.0.0.1", 0)


@dataclass
class Apis:
    """The fake external services, with switches and counters for the tests."""

    failing: set[str] = field(default_factory=set)
    weather_hits: Counter[str] = field(default_factory=Counter)
    stats_hits: int = 0
    alerts: list[dict[str, Any]] = field(default_factory=list)
    batch_alerts: list[dict[str, Any]] = field(default_factory=list)
    kma_cells: list[tuple[str, str]] = field(default_factory=list)

    def stats(self, request: Request) -> Response:
        self.stats_hits += 1
        if request.args.get("serviceKey") != STATS_KEY:
            return Response('{"error": "bad key"}', status=401, content_type="application/json")
        start = date.fromisoformat(_iso(request.args["startDate"]))
        end = date.fromisoformat(_iso(request.args["endDate"]))
        return _json(stats_payload(start, end))

    def weather(self, request: Request) -> Response:
        lat = float(request.args["latitude"])
        farm = FARM_BY_LAT[f"{lat:.4f}"]
        self.weather_hits[farm] += 1
        if farm in self.failing:
            return Response('{"error": "overloaded"}', status=503, content_type="application/json")
        start = date.fromisoformat(request.args["start_date"])
        end = date.fromisoformat(request.args["end_date"])
        return _json(open_meteo_payload(lat, float(request.args["longitude"]), start, end))

    def kma(self, request: Request) -> Response:
        self.kma_cells.append((request.args["nx"], request.args["ny"]))
        args = request.args
        return _json(kma_payload(int(args["nx"]), int(args["ny"]), args["base_date"], "0500"))

    def hook(self, request: Request) -> Response:
        self.alerts.append(json.loads(request.data))
        return Response("ok")

    def batch_hook(self, request: Request) -> Response:
        self.batch_alerts.append(json.loads(request.data))
        return Response("ok")


def _iso(yyyymmdd: str) -> str:
    return f"{yyyymmdd[:4]}-{yyyymmdd[4:6]}-{yyyymmdd[6:]}"


def _json(body: Any) -> Response:
    return Response(json.dumps(body), content_type="application/json")


@pytest.fixture
def apis(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> Apis:
    fake = Apis()
    httpserver.expect_request("/stats").respond_with_handler(fake.stats)
    httpserver.expect_request("/v1/forecast").respond_with_handler(fake.weather)
    httpserver.expect_request("/getVilageFcst").respond_with_handler(fake.kma)
    httpserver.expect_request("/hook", method="POST").respond_with_handler(fake.hook)
    httpserver.expect_request("/batch-hook", method="POST").respond_with_handler(fake.batch_hook)
    settings = {
        "WEEKLY_STATS_URL": httpserver.url_for("/stats"),
        "WEEKLY_STATS_KEY": STATS_KEY,
        "WEEKLY_OPEN_METEO_URL": httpserver.url_for("/v1/forecast"),
        "WEEKLY_OPEN_METEO_ARCHIVE_URL": httpserver.url_for("/v1/forecast"),
        "WEEKLY_KMA_URL": httpserver.url_for("/getVilageFcst"),
        "WEEKLY_ALERT_WEBHOOK_URL": httpserver.url_for("/hook"),
        "WEEKLY_BATCH_HOOK_URL": httpserver.url_for("/batch-hook"),
        # One quick in-runner retry per attempt; the step's own retries do the rest.
        "WEEKLY_HTTP_RETRIES": "1",
        "WEEKLY_HTTP_BACKOFF": "0.01",
        "WEEKLY_HTTP_TIMEOUT": "5",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WEEKLY_WEATHER_PROVIDER", raising=False)
    return fake


@pytest.fixture(params=["postgresql", "mariadb"])
def business(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[sa.Engine]:
    """A fresh business database with the example's schema and six farms, as ``report``."""
    backend: str = request.param
    url, handle = create_database(backend, tmp_path)
    yield from _business(url, monkeypatch)
    drop_database(backend, handle)


@pytest.fixture
def sqlite_business(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[sa.Engine]:
    yield from _business(f"sqlite:///{tmp_path / 'business.db'}", monkeypatch)


def _business(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[sa.Engine]:
    # Set before any Stepline or Connections object exists: both read settings once.
    monkeypatch.setenv("STEPLINE_CONNECTIONS__REPORT", url)
    reset_default_connections()
    engine = sa.create_engine(url)
    apply_schema(engine)
    seed_farms(engine, FARMS)
    yield engine
    engine.dispose()
    reset_default_connections()


@pytest.fixture
def app(tmp_path: Path, business: sa.Engine, apis: Apis) -> Iterator[Stepline]:
    with Stepline(db=f"sqlite:///{tmp_path / 'stepline.db'}") as service:
        yield service


def load(name: str = "weekly_report.yaml", **changes: Any) -> Any:
    """The example's definition, with quick retries so that failing tests stay fast."""
    doc = yaml.safe_load((EXAMPLE / name).read_text(encoding="utf-8"))
    for step in doc["steps"]:
        if "retry" in step:
            step["retry"] = {**step["retry"], "backoff": "50ms", "max_backoff": "100ms"}
    doc.update(changes)
    return parse_definition(doc, source=name)


def run(app: Stepline, instance_id: int | None = None, **definition: Any) -> InstanceRecord:
    if instance_id is None:
        stored = app.apply(load(**definition))
        instance, _ = app.trigger(stored.name, {"base_date": BASE_DATE}, owned=True)
        instance_id = instance.id
    return app.run_instance(instance_id)


def steps(app: Stepline, instance: InstanceRecord) -> dict[tuple[str, int], StepResultRecord]:
    return {(r.step_key, r.map_index): r for r in app.store.step_results(instance.id)}


def count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


def report_rows(engine: sa.Engine) -> int:
    return count(engine, "SELECT COUNT(*) FROM TR_WEEKLY_FARM_REPORT")


def procedure_runs(engine: sa.Engine) -> list[tuple[str, int | None]]:
    with engine.connect() as conn:
        return [
            (str(status), rows)
            for status, rows in conn.execute(
                sa.text(
                    "SELECT status, rows_written FROM TS_INS_JOB_LOG "
                    "WHERE job_name = 'SP_INS_WEEK_MAIN' ORDER BY log_id"
                )
            )
        ]


def job_log(engine: sa.Engine) -> list[tuple[str, str, int | None, str]]:
    """TS_INS_JOB_LOG as (job_name, status, instance_id, message), in insertion order."""
    with engine.connect() as conn:
        return [
            (str(job), str(status), None if iid is None else int(iid), str(message or ""))
            for job, status, iid, message in conn.execute(
                sa.text(
                    "SELECT job_name, status, instance_id, message FROM TS_INS_JOB_LOG "
                    "ORDER BY log_id"
                )
            )
        ]


def logged_outcomes(engine: sa.Engine, instance_id: int) -> Counter[tuple[str, str]]:
    """How many TS_INS_JOB_LOG rows of each (job, status); every row names the instance."""
    rows = job_log(engine)
    assert [r for r in rows if r[2] != instance_id] == [], rows
    return Counter((job, status) for job, status, _, _ in rows)


def test_the_whole_pipeline_builds_the_report(
    app: Stepline, business: sa.Engine, apis: Apis
) -> None:
    final = run(app)
    assert final.status is InstanceStatus.SUCCEEDED, final.error
    rows = steps(app, final)
    assert rows[("alert_admin", -1)].status is StepStatus.SKIPPED
    assert rows[("check", -1)].result_payload == {
        "period": "WEEK",
        "week_start": "2024-06-03",
        "week_end": "2024-06-09",
        "stats_rows": len(STAT_KEYS),
        "farms": len(FARMS),
        "weather_rows": 7 * len(FARMS),
    }
    assert rows[("run_report", -1)].result_payload == {"procedure": "SP_INS_WEEK_MAIN", "out": {}}
    assert sorted(apis.weather_hits.values()) == [1] * len(FARMS)
    assert apis.alerts == []

    assert report_rows(business) == len(FARMS) * ITEMS_PER_FARM
    assert procedure_runs(business) == [("SUCCESS", len(FARMS) * ITEMS_PER_FARM)]
    expected_price = stats_payload(WEEK_START, date(2024, 6, 9))["items"][0]["value"]
    with business.connect() as conn:
        values = {
            str(code): value
            for code, value in conn.execute(
                sa.text(
                    "SELECT item_code, item_value FROM TR_WEEKLY_FARM_REPORT "
                    "WHERE farm_id = 'F001' AND week_start = :w"
                ).bindparams(sa.bindparam("w", type_=sa.Date)),
                {"w": WEEK_START},
            )
        }
        logged = [
            (str(job), str(status))
            for job, status in conn.execute(
                sa.text("SELECT job_name, status FROM TS_INS_JOB_LOG ORDER BY log_id")
            )
        ]
    assert values["WEATHER_DAYS"] == 7
    assert float(values["STAT_PIG_PRICE_AVG"]) == expected_price
    assert float(values["TEMP_MIN"]) < float(values["TEMP_AVG"]) < float(values["TEMP_MAX"])
    # The final handler runs last: its own row, then one for the step that never ran.
    assert logged[-3:] == [
        ("SP_INS_WEEK_MAIN", "SUCCESS"),
        ("weekly_report.job_log", "SUCCESS"),
        ("weekly_report.alert_admin", "SKIPPED"),
    ]
    # A row for every step outcome, each with the instance id.
    assert logged_outcomes(business, final.id) == Counter(
        {
            ("weekly_report.resolve_week", "SUCCESS"): 1,
            ("weekly_report.collect_stats", "SUCCESS"): 1,
            ("weekly_report.list_farms", "SUCCESS"): 1,
            ("weekly_report.collect_weather", "SUCCESS"): len(FARMS),
            ("weekly_report.check", "SUCCESS"): 1,
            ("weekly_report.run_report", "SUCCESS"): 1,
            ("SP_INS_WEEK_MAIN", "SUCCESS"): 1,
            ("weekly_report.alert_admin", "SKIPPED"): 1,
            ("weekly_report.job_log", "SUCCESS"): 1,
        }
    )


def test_failed_farms_alert_and_stop_then_retry_collects_only_them(
    app: Stepline, business: sa.Engine, apis: Apis
) -> None:
    apis.failing = {"F002", "F004", "F006"}
    # The batch-level alternative to the alert_admin step, to a second hook.
    batch_alert = [{"type": "webhook", "url": os.environ["WEEKLY_BATCH_HOOK_URL"]}]
    failed = run(app, alerts=batch_alert)

    assert failed.status is InstanceStatus.FAILED
    rows = steps(app, failed)
    weather = {
        r.result_payload["farm_id"]
        for k, r in rows.items()
        if k[0] == "collect_weather" and r.status is StepStatus.SUCCEEDED and k[1] >= 0
    }
    failed_items = [
        k[1]
        for k, r in rows.items()
        if k[0] == "collect_weather" and k[1] >= 0 and r.status is StepStatus.FAILED
    ]
    assert weather == {"F001", "F003", "F005"} and len(failed_items) == 3
    assert rows[("check", -1)].status is StepStatus.UPSTREAM_FAILED
    assert rows[("run_report", -1)].status is StepStatus.UPSTREAM_FAILED
    assert rows[("alert_admin", -1)].status is StepStatus.SUCCEEDED
    # Each failing farm: 3 step attempts x (1 request + 1 in-runner retry); the others once.
    assert {f: apis.weather_hits[f] for f in sorted(apis.failing)} == {
        "F002": 6,
        "F004": 6,
        "F006": 6,
    }
    assert all(apis.weather_hits[f] == 1 for f in ("F001", "F003", "F005"))
    # The alert step reached the admin webhook; so did the batch-level alert.
    assert len(apis.alerts) == 1
    assert apis.alerts[0]["batch"] == "weekly_report"
    assert apis.alerts[0]["instance_id"] == failed.id
    assert f"stepline retry {failed.id}" in apis.alerts[0]["text"]
    for thread in app.orchestrator.alert_threads:
        if thread is not None:
            thread.join(10)
    assert len(apis.batch_alerts) == 1 and apis.batch_alerts[0]["status"] == "failed"
    # The procedure never ran: no report, no log of it.
    assert report_rows(business) == 0
    assert procedure_runs(business) == []
    # Failures are in the job log too, each attempt of a farm named by the farm.
    assert logged_outcomes(business, failed.id) == Counter(
        {
            ("weekly_report.resolve_week", "SUCCESS"): 1,
            ("weekly_report.collect_stats", "SUCCESS"): 1,
            ("weekly_report.list_farms", "SUCCESS"): 1,
            ("weekly_report.collect_weather", "SUCCESS"): 3,
            ("weekly_report.collect_weather", "FAILED"): 3 * 3,
            ("weekly_report.alert_admin", "SUCCESS"): 1,
            ("weekly_report.check", "SKIPPED"): 1,
            ("weekly_report.run_report", "SKIPPED"): 1,
            ("weekly_report.job_log", "SUCCESS"): 1,
        }
    )
    failed_farms = Counter(
        message.split(":")[0] for _, status, _, message in job_log(business) if status == "FAILED"
    )
    assert failed_farms == Counter(
        {f"collect_weather[{farm}]": 3 for farm in ("F002", "F004", "F006")}
    )
    assert "3 of 6 items failed: collect_weather[F002], collect_weather[F004], " in (
        rows[("collect_weather", -1)].error or ""
    )

    apis.failing.clear()
    before = Counter(apis.weather_hits)
    app.retry(failed.id)
    final = run(app, failed.id)

    assert final.status is InstanceStatus.SUCCEEDED, final.error
    assert apis.weather_hits - before == Counter({"F002": 1, "F004": 1, "F006": 1})
    assert apis.stats_hits == 1  # the statistics step succeeded the first time: reused
    assert report_rows(business) == len(FARMS) * ITEMS_PER_FARM
    assert procedure_runs(business) == [("SUCCESS", len(FARMS) * ITEMS_PER_FARM)]


def test_running_the_same_week_twice_leaves_no_duplicates(
    app: Stepline, business: sa.Engine, apis: Apis
) -> None:
    tables = ["TA_STATS_DATA", "TM_WEATHER", "TR_WEEKLY_FARM_REPORT"]
    assert run(app).status is InstanceStatus.SUCCEEDED
    first = {t: count(business, f"SELECT COUNT(*) FROM {t}") for t in tables}
    assert run(app).status is InstanceStatus.SUCCEEDED
    second = {t: count(business, f"SELECT COUNT(*) FROM {t}") for t in tables}
    assert (
        first
        == second
        == {
            "TA_STATS_DATA": len(STAT_KEYS),
            "TM_WEATHER": 7 * len(FARMS),
            "TR_WEEKLY_FARM_REPORT": len(FARMS) * ITEMS_PER_FARM,
        }
    )
    assert procedure_runs(business) == [("SUCCESS", len(FARMS) * ITEMS_PER_FARM)] * 2


def test_an_incomplete_collection_fails_the_check_with_counts(
    app: Stepline, business: sa.Engine, apis: Apis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEEKLY_STATS_MIN_ROWS", "10")  # the API only has three statistics
    final = run(app)
    assert final.status is InstanceStatus.FAILED
    rows = steps(app, final)
    check = rows[("check", -1)]
    assert check.status is StepStatus.FAILED and check.attempt == 1
    assert "TA_STATS_DATA has 3 rows for WEEK 2024-06-03, expected at least 10" in (
        check.error or ""
    )
    assert rows[("run_report", -1)].status is StepStatus.UPSTREAM_FAILED
    assert procedure_runs(business) == [] and len(apis.alerts) == 1


def test_a_failing_procedure_logs_failed_and_raises(business: sa.Engine) -> None:
    with business.connect() as conn:
        conn.execute(sa.text("ALTER TABLE TR_WEEKLY_FARM_REPORT RENAME TO TR_WEEKLY_GONE"))
        conn.commit()
    connections = Connections.from_settings()
    context = StepContext(
        batch="weekly_report",
        instance_id=1,
        step="run_report",
        attempt=1,
        params={},
        results={},
        args={
            "connection": "report",
            "procedure": "SP_INS_WEEK_MAIN",
            "args": ["WEEK", {"value": "2024-06-05", "type": "date"}],
        },
        log=structlog.get_logger("test"),
        connections=connections,
    )
    try:
        with pytest.raises(DatabaseError, match="SP_INS_WEEK_MAIN failed"):
            call_procedure(context)
    finally:
        connections.dispose()
    # The FAILED row survived the procedure's rollback.
    assert procedure_runs(business) == [("FAILED", None)]


def test_a_failing_procedure_is_logged_with_the_instance_id(
    app: Stepline, business: sa.Engine, apis: Apis
) -> None:
    with business.connect() as conn:
        conn.execute(sa.text("ALTER TABLE TR_WEEKLY_FARM_REPORT RENAME TO TR_WEEKLY_GONE"))
        conn.commit()

    failed = run(app)

    assert failed.status is InstanceStatus.FAILED
    outcomes = logged_outcomes(business, failed.id)
    assert outcomes[("weekly_report.run_report", "FAILED")] == 1
    assert outcomes[("SP_INS_WEEK_MAIN", "FAILED")] == 1
    assert outcomes[("weekly_report.alert_admin", "SUCCESS")] == 1


def rows_of(engine: sa.Engine, instance_id: int) -> dict[str, list[tuple[str, str]]]:
    """TS_INS_JOB_LOG rows of ``instance_id`` as {job: [(status, message)]}, in order."""
    found: dict[str, list[tuple[str, str]]] = {}
    for job, status, iid, message in job_log(engine):
        assert iid == instance_id, (job, status, iid)
        found.setdefault(job, []).append((status, message))
    return found


def _a_failing_collector_logs_every_outcome(app: Stepline, engine: sa.Engine, name: str) -> None:
    stored = app.apply(load(name))
    instance, _ = app.trigger(stored.name, {"base_date": BASE_DATE}, owned=True)
    final = app.run_instance(instance.id)

    assert final.status is InstanceStatus.FAILED
    status = {k: r.status for (k, i), r in steps(app, final).items() if i < 0}
    assert status == {
        "resolve_week": StepStatus.SUCCEEDED,
        "collect_stats": StepStatus.FAILED,
        "list_farms": StepStatus.SUCCEEDED,
        "collect_weather": StepStatus.SUCCEEDED,
        "check": StepStatus.UPSTREAM_FAILED,
        "run_report": StepStatus.UPSTREAM_FAILED,
        "alert_admin": StepStatus.SUCCEEDED,
        "job_log": StepStatus.SUCCEEDED,
    }
    rows = rows_of(engine, final.id)  # every row carries the instance id
    assert {job for job in rows} == {f"weekly_report.{key}" for key in status}
    assert {s for s, _ in rows["weekly_report.collect_stats"]} == {"FAILED"}
    assert "401" in rows["weekly_report.collect_stats"][0][1]
    assert "wrong-key" not in str(rows)  # secrets masked
    assert [s for s, _ in rows["weekly_report.collect_weather"]] == ["SUCCESS"] * len(FARMS)
    for key in ("resolve_week", "list_farms", "alert_admin", "job_log"):
        assert [s for s, _ in rows[f"weekly_report.{key}"]] == ["SUCCESS"], key
    for key in ("check", "run_report"):
        assert rows[f"weekly_report.{key}"] == [
            ("SKIPPED", "upstream_failed: not run: an upstream step failed")
        ]
    with engine.connect() as conn:
        weeks = set(
            conn.execute(
                sa.text(
                    "SELECT DISTINCT period_start FROM TS_INS_JOB_LOG "
                    "WHERE job_name IN ('weekly_report.check', 'weekly_report.run_report')"
                )
            ).scalars()
        )
    assert {str(w)[:10] for w in weeks} == {WEEK_START.isoformat()}


def test_a_failing_collector_gives_every_step_outcome_a_row(
    app: Stepline, business: sa.Engine, apis: Apis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEEKLY_STATS_KEY", "wrong-key")  # the statistics API answers 401
    _a_failing_collector_logs_every_outcome(app, business, "weekly_report.yaml")


def test_a_failing_collector_gives_every_step_outcome_a_row_on_sqlite(
    tmp_path: Path, sqlite_business: sa.Engine, apis: Apis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEEKLY_STATS_KEY", "wrong-key")
    with Stepline(db=f"sqlite:///{tmp_path / 'stepline.db'}") as app:
        _a_failing_collector_logs_every_outcome(app, sqlite_business, "weekly_report_sqlite.yaml")


def test_the_sqlite_variant_builds_the_same_report(
    tmp_path: Path, sqlite_business: sa.Engine, apis: Apis
) -> None:
    with Stepline(db=f"sqlite:///{tmp_path / 'stepline.db'}") as app:
        stored = app.apply(load("weekly_report_sqlite.yaml"))
        instance, _ = app.trigger(stored.name, {"base_date": BASE_DATE}, owned=True)
        final = app.run_instance(instance.id)
    assert final.status is InstanceStatus.SUCCEEDED, final.error
    assert report_rows(sqlite_business) == len(FARMS) * ITEMS_PER_FARM
    assert procedure_runs(sqlite_business) == [("SUCCESS", len(FARMS) * ITEMS_PER_FARM)]


def test_the_kma_provider_asks_for_each_farms_grid_cell(
    tmp_path: Path, sqlite_business: sa.Engine, apis: Apis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEEKLY_WEATHER_PROVIDER", "kma")
    monkeypatch.setenv("WEEKLY_KMA_KEY", "kma-KEY-5ecret")
    with Stepline(db=f"sqlite:///{tmp_path / 'stepline.db'}") as app:
        stored = app.apply(load("weekly_report_sqlite.yaml"))
        instance, _ = app.trigger(stored.name, {"base_date": BASE_DATE}, owned=True)
        final = app.run_instance(instance.id)
    assert final.status is InstanceStatus.SUCCEEDED, final.error
    assert ("60", "127") in apis.kma_cells and ("98", "76") in apis.kma_cells  # Seoul, Busan
    assert len(apis.kma_cells) == len(FARMS) and not apis.weather_hits
    assert count(sqlite_business, "SELECT COUNT(*) FROM TM_WEATHER") == 3 * len(FARMS)


def test_the_readme_command_reports_the_given_week(
    tmp_path: Path, business: sa.Engine, apis: Apis
) -> None:
    """README: ``stepline run examples/weekly_report/weekly_report.yaml --param
    base_date=2024-06-05``, from the repository root, as a user types it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(STEPLINE_DB=f"sqlite:///{tmp_path / 'stepline.db'}", NO_COLOR="1")
    command = [
        str(Path(sys.executable).parent / "stepline"),
        "run",
        "examples/weekly_report/weekly_report.yaml",
        "--param",
        "base_date=2024-06-05",
    ]

    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False
    )

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output
    assert report_rows(business) == len(FARMS) * ITEMS_PER_FARM
    with business.connect() as conn:
        weeks = set(
            conn.execute(sa.text("SELECT DISTINCT week_start FROM TR_WEEKLY_FARM_REPORT")).scalars()
        )
    assert {str(w)[:10] for w in weeks} == {WEEK_START.isoformat()}
