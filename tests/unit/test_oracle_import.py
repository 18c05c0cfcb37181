"""`stepline import-oracle`: DBMS_SCHEDULER jobs, programs and chains become batches.

The catalog comes from the exported JSON, or live through python-oracledb's DB API, faked
only at the driver boundary (a cursor answering the ALL_SCHEDULER_* queries).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from stepline.core.definition import BatchDefinition
from stepline.core.loader import load_definitions, parse_definition
from stepline.core.templates import resolve
from stepline.oracle.catalog import FORMAT, QUERIES, catalog_from_document, read_catalog
from stepline.oracle.convert import convert_catalog
from stepline.oracle.report import TargetExists, import_jobs, render
from stepline.scheduling.cron import CronSchedule

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "weekly_report" / "weekly_report.yaml"
NOW = datetime(2026, 12, 1, tzinfo=UTC)

SEED_JOB = {
    "owner": "FARM",
    "job_name": "JOB_INS_WEEKLY_REPORT",
    "job_type": "PLSQL_BLOCK",
    "job_action": "BEGIN SP_INS_WEEK_MAIN('WEEK', NULL); END;",
    "repeat_interval": "FREQ=WEEKLY;BYDAY=MON;BYHOUR=2;BYMINUTE=0;BYSECOND=0",
    "start_date": "2023-01-02T02:00:00+09:00",
    "start_timezone": "Asia/Seoul",
    "enabled": "TRUE",
    "auto_drop": "FALSE",
    "job_class": "DEFAULT_JOB_CLASS",
    "max_runs": None,
    "max_failures": None,
    "comments": "weekly farm report",
}


def export(**lists: list[dict[str, Any]]) -> dict[str, Any]:
    return {"format": FORMAT, "owner": "FARM", "default_timezone": "Asia/Seoul", **lists}


def test_the_seed_job_becomes_the_weekly_report_schedule_and_call() -> None:
    catalog = catalog_from_document(export(jobs=[SEED_JOB]))
    (result,) = convert_catalog(catalog, connection="report", now=NOW)
    assert result.refused == [] and result.document is not None
    imported = parse_definition(result.document, "imported")
    _, example = next(iter(load_definitions(EXAMPLE, check_runners=False)))
    assert isinstance(example, BatchDefinition)
    # the same schedule: the same cron, zone and fire times over two years
    assert (imported.cron, imported.timezone) == (example.cron, example.timezone)
    assert imported.cron is not None and example.cron is not None
    ours = CronSchedule.parse(imported.cron, "Asia/Seoul").fire_times(NOW, 105)
    assert ours == CronSchedule.parse(example.cron, "Asia/Seoul").fire_times(NOW, 105)
    # the same call: SP_INS_WEEK_MAIN on the report connection with period WEEK
    (step,) = imported.steps
    report = example.step("run_report")
    assert step.runner == "stepline.sql:call_procedure"
    # the example wraps the same runner (same `with`) to log the step: see its run_report
    assert report.runner in (step.runner, "examples.weekly_report.weekly_report:run_report")
    assert step.args["procedure"] == report.args["procedure"] == "SP_INS_WEEK_MAIN"
    assert step.args["connection"] == report.args["connection"] == "report"
    assert step.args["args"] == ["WEEK", None]  # Oracle's call, literally
    resolved = resolve(
        report.args["args"],
        {"params": example.params, "results": {"check": {"week_start": "2026-11-30"}}},
    )
    assert resolved[0] == "WEEK"  # the example passes the week it checked instead of NULL
    assert imported.description == "weekly farm report"
    # the report: the fire times agree, and the DISABLE statement for after go-live
    assert result.disagreements == 0 and len(result.fire_times) == 10
    text = render_one(result)
    assert "EXEC DBMS_SCHEDULER.DISABLE('FARM.JOB_INS_WEEKLY_REPORT');" in text
    assert "2026-12-07 02:00:00 Mon    2026-12-07 02:00:00 Mon" in text


def render_one(result: Any) -> str:
    from stepline.oracle.report import ImportResult

    return render(ImportResult([result], []))


def test_programs_arguments_and_attributes() -> None:
    job = {
        **SEED_JOB,
        "job_name": "JOB_PURGE",
        "job_type": None,
        "job_action": None,
        "program_owner": "FARM",
        "program_name": "PRG_PURGE",
        "repeat_interval": "FREQ=DAILY;BYHOUR=3",
        "start_date": "2024-05-01T03:15:00+09:00",
        "start_timezone": None,  # an offset only: a fixed Etc/GMT zone
        "enabled": "FALSE",
        "max_runs": 100,
        "max_failures": 3,
        "auto_drop": "TRUE",
        "job_class": "BATCH_CLASS",
        "max_run_duration": "+000 01:30:00",
    }
    programs = [
        {
            "owner": "FARM",
            "program_name": "PRG_PURGE",
            "program_type": "STORED_PROCEDURE",
            "program_action": "PKG_ADMIN.PURGE",
            "number_of_arguments": 2,
        }
    ]
    program_args = [
        {"owner": "FARM", "program_name": "PRG_PURGE", "argument_position": 1,
         "argument_type": "VARCHAR2", "default_value": "LOG"},
        {"owner": "FARM", "program_name": "PRG_PURGE", "argument_position": 2,
         "argument_type": "NUMBER", "default_value": "30"},
    ]  # fmt: skip
    job_args = [{"job_name": "JOB_PURGE", "argument_position": 2, "value": "90"}]
    catalog = catalog_from_document(
        export(jobs=[job], programs=programs, program_args=program_args, job_args=job_args)
    )
    (result,) = convert_catalog(catalog, qualify=True, now=NOW)
    assert result.document is not None
    assert "cron" not in result.document  # disabled in Oracle: not scheduled here either
    assert result.document["timezone"] == "Etc/GMT-9"
    (step,) = result.document["steps"]
    assert step["with"] == {
        "connection": "oracle",
        "procedure": "PKG_ADMIN.PURGE",  # qualified already (package or owner)
        "args": ["LOG", {"value": "90", "type": "number"}],
    }
    assert step["timeout"] == "5400s"
    dropped = " | ".join(result.dropped)
    for attribute in ("max_runs=100", "max_failures=3", "auto_drop=TRUE", "BATCH_CLASS"):
        assert attribute in dropped
    assert any("enabled=FALSE" in m and "15 3 * * *" in m for m in result.mapped)
    parse_definition(result.document, "imported")


CHAIN_STEPS = [
    ("LOAD", "PRG_LOAD"),
    ("STATS", "PRG_STATS"),
    ("WEATHER", "PRG_WEATHER"),
    ("REPORT", "PRG_REPORT"),
    ("ALERT", "PRG_ALERT"),
    ("NEVER", "PRG_LOAD"),
]


def chain_export(rules: list[tuple[str, str]]) -> dict[str, Any]:
    job = {**SEED_JOB, "job_name": "JOB_CHAIN", "job_type": "CHAIN", "job_action": "CH_WEEK"}
    return export(
        jobs=[job],
        chains=[{"owner": "FARM", "chain_name": "CH_WEEK"}],
        chain_steps=[
            {
                "owner": "FARM",
                "chain_name": "CH_WEEK",
                "step_name": s,
                "program_name": p,
                "step_type": "PROGRAM",
            }
            for s, p in CHAIN_STEPS
        ],
        chain_rules=[
            {
                "owner": "FARM",
                "chain_name": "CH_WEEK",
                "rule_name": f"R{i}",
                "condition": c,
                "action": a,
            }
            for i, (c, a) in enumerate(rules)
        ],
        programs=[
            {
                "owner": "FARM",
                "program_name": p,
                "program_type": "PLSQL_BLOCK",
                "program_action": f"BEGIN {p}_RUN; END;",
            }
            for _, p in CHAIN_STEPS
        ],
    )


def test_a_chain_becomes_steps_with_next_steps_and_trigger_rules() -> None:
    rules = [
        ("TRUE", "START LOAD"),
        ("LOAD SUCCEEDED", "START STATS, WEATHER"),
        ("STATS SUCCEEDED AND WEATHER SUCCEEDED", "START REPORT"),
        (":LOAD.state='FAILED' OR STATS FAILED", "START ALERT"),
        ("REPORT COMPLETED", "END"),
    ]
    (result,) = convert_catalog(catalog_from_document(chain_export(rules)), now=NOW)
    assert result.refused == [], result.refused
    assert result.document is not None
    steps = {s["key"]: s for s in result.document["steps"]}
    assert set(steps) == {"load", "stats", "weather", "report", "alert"}
    assert steps["load"]["next_steps"] == ["stats", "weather", "alert"]
    assert steps["stats"]["next_steps"] == ["report", "alert"]
    assert steps["weather"]["next_steps"] == ["report"]
    assert "trigger_rule" not in steps["report"]  # all_success, the default
    assert steps["alert"]["trigger_rule"] == "one_failed"
    assert steps["load"]["with"]["procedure"] == "PRG_LOAD_RUN"
    assert any("NEVER" in d for d in result.dropped)
    assert any("END" in d for d in result.dropped)
    definition = parse_definition(result.document, "chain")
    assert definition.graph.predecessors["report"] == ("stats", "weather") or set(
        definition.graph.predecessors["report"]
    ) == {"stats", "weather"}


@pytest.mark.parametrize(
    ("rules", "why"),
    [
        ([("TRUE", "START LOAD"), ("LOAD SUCCEEDED AND STATS FAILED", "START REPORT"),
          ("LOAD SUCCEEDED", "START STATS")], "combines states"),
        ([("TRUE", "START LOAD"), ("LOAD SUCCEEDED OR STATS SUCCEEDED AND LOAD FAILED",
          "START REPORT")], "mixes AND and OR"),
        ([("TRUE", "START LOAD"), ("LOAD SUCCEEDED", "START REPORT"),
          ("LOAD FAILED", "START REPORT")], "started by two rules"),
        ([("TRUE", "START LOAD"), ("NOT LOAD SUCCEEDED", "START REPORT")], "parentheses or NOT"),
        ([("TRUE", "START LOAD"), ("LOAD SUCCEEDED", "STOP LOAD")], "not START or END"),
    ],
)  # fmt: skip
def test_chain_rules_without_a_trigger_rule_are_refused(
    rules: list[tuple[str, str]], why: str
) -> None:
    (result,) = convert_catalog(catalog_from_document(chain_export(rules)), now=NOW)
    assert result.document is None
    assert why in result.refused[0]


def test_one_refused_job_does_not_stop_the_others(tmp_path: Path) -> None:
    jobs = [
        SEED_JOB,
        {**SEED_JOB, "job_name": "JOB_LAST_WORKDAY",
         "repeat_interval": "FREQ=MONTHLY;BYDAY=MON,TUE,WED,THU,FRI;BYSETPOS=-1"},
        {**SEED_JOB, "job_name": "JOB_SHELL", "job_type": "EXECUTABLE",
         "job_action": "/bin/backup.sh"},
    ]  # fmt: skip
    result = import_jobs(catalog_from_document(export(jobs=jobs)), tmp_path, now=NOW)
    assert [p.name for p in result.written] == ["job_ins_weekly_report.yaml"]
    assert not result.ok
    text = render(result)
    assert "== FARM.JOB_LAST_WORKDAY NOT CONVERTED" in " ".join(text.split())
    assert "BYSETPOS cannot be converted" in text and "Instead:" in text
    assert "job type EXECUTABLE" in text
    written = yaml.safe_load(result.written[0].read_text(encoding="utf-8"))
    assert written["cron"] == "0 0 2 * * 1"
    assert (
        result.written[0]
        .read_text(encoding="utf-8")
        .startswith("# Imported from the Oracle DBMS_SCHEDULER job FARM.JOB_INS_WEEKLY_REPORT")
    )
    with pytest.raises(TargetExists, match="--force"):
        import_jobs(catalog_from_document(export(jobs=jobs)), tmp_path, now=NOW)
    again = import_jobs(catalog_from_document(export(jobs=jobs)), tmp_path, force=True, now=NOW)
    assert len(again.written) == 1
    with pytest.raises(ValueError, match="JOB_NOPE"):
        import_jobs(catalog_from_document(export(jobs=jobs)), tmp_path, jobs=["job_nope"])


class FakeOracleCursor:
    """python-oracledb's cursor contract, answering the ALL_SCHEDULER_* views from rows.

    The column names come from the statement's own SELECT list, as the database would
    describe them (upper case); a statement for another owner or without the owner bind
    is refused, as the real view would return nothing.
    """

    def __init__(self, views: dict[str, list[dict[str, Any]]], log: list[str]) -> None:
        self.views = views
        self.log = log
        self.description: list[tuple[str, ...]] | None = None
        self._rows: list[tuple[Any, ...]] = []

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self.log.append(sql)
        view = re.search(r"FROM (all_scheduler_\w+)", sql)
        assert view is not None, sql
        select = sql[len("SELECT ") : sql.index(" FROM all_scheduler")]
        columns = [re.split(r"\s+AS\s+", c.strip())[-1].strip().upper() for c in _top_level(select)]
        self.description = [(c, None, None, None, None, None, None) for c in columns]
        if view.group(1) == "all_scheduler_global_attribute":
            self._rows = [("Asia/Seoul",)]
            return
        assert params == {"owner": "FARM"}, params
        assert "owner = :owner" in sql
        rows = self.views.get(view.group(1), [])
        self._rows = [tuple(r.get(c.lower()) for c in columns) for r in rows]

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows

    def close(self) -> None:
        pass


def _top_level(select: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in select:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


class FakeOracleConnection:
    def __init__(self, views: dict[str, list[dict[str, Any]]]) -> None:
        self.views = views
        self.log: list[str] = []

    def cursor(self) -> FakeOracleCursor:
        return FakeOracleCursor(self.views, self.log)


def test_a_live_connection_reads_every_scheduler_view() -> None:
    connection = FakeOracleConnection({"all_scheduler_jobs": [SEED_JOB]})
    catalog = read_catalog(connection, "farm")
    assert catalog.owner == "FARM" and catalog.default_timezone == "Asia/Seoul"
    read = {re.search(r"FROM (all_scheduler_\w+)", sql).group(1) for sql in connection.log}  # type: ignore[union-attr]
    assert read == {
        "all_scheduler_jobs",
        "all_scheduler_job_args",
        "all_scheduler_programs",
        "all_scheduler_program_args",
        "all_scheduler_chains",
        "all_scheduler_chain_steps",
        "all_scheduler_chain_rules",
        "all_scheduler_schedules",
        "all_scheduler_global_attribute",
    }
    (result,) = convert_catalog(catalog, connection="report", now=NOW)
    assert result.document is not None
    assert result.document["cron"] == "0 0 2 * * 1"
    assert result.document["timezone"] == "Asia/Seoul"  # the region, not only the offset
    assert result.document["steps"][0]["with"]["args"] == ["WEEK", None]


def test_the_export_script_writes_the_columns_the_live_queries_read() -> None:
    script = (REPO / "docs" / "oracle" / "export-scheduler.sql").read_text(encoding="utf-8")
    for name, sql in QUERIES.items():
        assert f"'{name}' VALUE (" in script
        select = sql[len("SELECT ") : sql.index(" FROM all_scheduler")]
        for column in _top_level(select):
            key = re.split(r"\s+AS\s+", column.strip())[-1].strip().lower()
            assert f"'{key}' VALUE" in script, (name, key)
    assert f"'{FORMAT}'" in script


def test_a_json_export_round_trips_and_bad_input_is_named(tmp_path: Path) -> None:
    from stepline.oracle.catalog import CatalogError, load_catalog

    path = tmp_path / "scheduler-FARM.json"
    path.write_text(json.dumps(export(jobs=[SEED_JOB], programs=None)), encoding="utf-8")
    assert load_catalog(path).jobs[0]["job_name"] == "JOB_INS_WEEKLY_REPORT"
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(CatalogError, match="not a scheduler export"):
        load_catalog(path)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(CatalogError, match="is not JSON"):
        load_catalog(path)


def test_a_job_without_start_date_needs_a_rule_that_names_every_field() -> None:
    complete = {**SEED_JOB, "start_date": None, "start_timezone": None}
    partial = {**complete, "job_name": "JOB_PARTIAL", "repeat_interval": "FREQ=DAILY"}
    catalog = catalog_from_document(export(jobs=[complete, partial]))
    done, refused = convert_catalog(catalog, now=NOW)
    assert done.document is not None
    assert (done.document["cron"], done.document["timezone"]) == ("0 0 2 * * 1", "Asia/Seoul")
    assert done.disagreements == 0
    assert refused.document is None and "no start_date" in refused.refused[0]
    catalog.default_timezone = "+09:00"  # an offset: a fixed zone
    done, _ = convert_catalog(catalog, now=NOW)
    assert done.document is not None and done.document["timezone"] == "Etc/GMT-9"
