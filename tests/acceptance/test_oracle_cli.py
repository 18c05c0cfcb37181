"""Acceptance: `stepline import-oracle` and Oracle URLs, through the real command.

No Oracle server runs here: a live URL points at a closed local port, which must give a
clear "unavailable" (exit 3), not a traceback.
"""

from __future__ import annotations

import json

FORMAT = "stepline-oracle-scheduler/1"
SEED_JOB = {
    "owner": "FARM",
    "job_name": "JOB_INS_WEEKLY_REPORT",
    "job_type": "PLSQL_BLOCK",
    "job_action": "BEGIN SP_INS_WEEK_MAIN('WEEK', NULL); END;",
    "repeat_interval": "FREQ=WEEKLY;BYDAY=MON;BYHOUR=2;BYMINUTE=0;BYSECOND=0",
    "start_date": "2023-01-02T02:00:00+09:00",
    "start_timezone": "Asia/Seoul",
    "enabled": "TRUE",
}


def test_import_oracle_writes_a_valid_batch_and_reports(cli) -> None:
    cli.write("scheduler-FARM.json", json.dumps({"format": FORMAT, "owner": "FARM",
                                                "jobs": [SEED_JOB]}))  # fmt: skip
    result = cli(
        "import-oracle", "--from-json", "scheduler-FARM.json", "--out", "batches",
        "--connection", "report",
    )  # fmt: skip
    assert result.code == 0, result.report
    assert "EXEC DBMS_SCHEDULER.DISABLE('FARM.JOB_INS_WEEKLY_REPORT');" in result.out
    assert "stepline cron dateutil.rrule" in result.out
    assert "DISAGREE" not in result.out
    assert (cli.root / "batches" / "job_ins_weekly_report.yaml").exists()
    checked = cli("validate", "batches")
    assert checked.code == 0, checked.report
    again = cli("import-oracle", "--from-json", "scheduler-FARM.json", "--out", "batches")
    assert again.code == 2 and "--force" in again.err, again.report


def test_import_oracle_refuses_bad_input_with_exit_2(cli) -> None:
    cli.write("bad.json", "{}")
    cases = [
        (["import-oracle"], "exactly one of --from-json FILE or --url URL"),
        (["import-oracle", "--from-json", "bad.json"], "not a scheduler export"),
        (["import-oracle", "--from-json", "missing.json"], "cannot read missing.json"),
        (["import-oracle", "--url", "postgresql://u@127.0.0.1/x"], "must be an Oracle URL"),
    ]
    for args, message in cases:
        result = cli(*args)
        assert result.code == 2, result.report
        assert message in result.err, result.report
        assert "Traceback" not in result.err


def test_oracle_urls_reach_the_driver_and_fail_as_unavailable(cli) -> None:
    url = "oracle://scott:tiger@127.0.0.1:9/?service_name=ORCL"
    upgrade = cli("db", "upgrade", "--db", url)
    assert upgrade.code == 3, upgrade.report  # used to be a TypeError about json_serializer
    assert "unavailable" in upgrade.err and "tiger" not in upgrade.err + upgrade.out
    live = cli("import-oracle", "--url", url, "--owner", "farm")
    assert live.code == 3, live.report
    assert "cannot connect" in live.err and "tiger" not in live.err + live.out
