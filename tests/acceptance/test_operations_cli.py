"""Acceptance: the operators' commands of the real ``stepline`` command — pause, resume,
backfill, delete, logs, purge — and the conventions: --version, --json, --tz, STEPLINE_DB
in --help, a missing database driver, an invalid setting."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import STEPLINE, Cli

DAILY = """\
name: daily
cron: "0 2 * * *"
timezone: Asia/Seoul
params: {day: "{{ scheduled_date }}", api_token: hunter2-secret}
steps:
  - key: talk
    runner: talk:talk
"""
TALK = """\
import logging

def talk(ctx):
    ctx.log.info("working on", day=ctx.params["day"])
    logging.getLogger("vendor.sdk").warning("calling with %s", ctx.params["api_token"])
    return ctx.params["day"]
"""


def setup(cli: Cli) -> None:
    cli.write("daily.yaml", DAILY)
    cli.write("talk.py", TALK)
    assert cli("apply", "daily.yaml").code == 0


def test_pause_resume_and_backfill(cli: Cli) -> None:
    setup(cli)
    paused = cli("pause", "daily")
    assert paused.code == 0 and "paused" in paused.out
    refused = cli("run", "daily")
    assert refused.code == 2 and "paused" in refused.err, refused.report
    # A changed file run while paused is refused before it is applied: nothing changes.
    cli.write("daily2.yaml", DAILY.replace("0 2 * * *", "0 3 * * *"))
    refused = cli("run", "daily2.yaml")
    assert refused.code == 2 and "daily2.yaml was not applied" in refused.err, refused.report
    assert cli.rows("SELECT version FROM batch_definition") == [(1,)]
    listed = json.loads(cli("batches", "--json").stdout)
    assert listed["batches"][0]["paused"] is True
    refused = cli("backfill", "daily", "--from", "2026-10-05", "--to", "2026-10-06")
    assert refused.code == 2 and "paused" in refused.err
    assert cli("resume", "daily").code == 0

    dry = cli("backfill", "daily", "--from", "2026-10-05", "--to", "2026-10-06", "--dry-run")
    assert dry.code == 0 and "2 would create" in dry.out, dry.report
    assert cli.count("batch_instance") == 0
    made = cli("backfill", "daily", "--from", "2026-10-05", "--to", "2026-10-06", "--json")
    fires = json.loads(made.stdout)["fire_times"]
    assert [f["scheduled_for"] for f in fires] == [
        "2026-10-05T02:00:00+09:00",
        "2026-10-06T02:00:00+09:00",
    ]
    assert {f["state"] for f in fires} == {"created"}
    again = cli("backfill", "daily", "--from", "2026-10-05", "--to", "2026-10-06")
    assert "2 exists" in again.out
    bad = cli("backfill", "daily", "--from", "5 Oct", "--to", "2026-10-06")
    assert bad.code == 2 and "YYYY-MM-DD" in bad.err and "Traceback" not in bad.stderr
    rows = json.loads(cli("instances", "daily", "--json").stdout)["instances"]
    assert sorted(r["params"]["day"] for r in rows) == ["2026-10-05", "2026-10-06"]
    assert all(r["trigger"] == "backfill" and r["status"] == "queued" for r in rows)
    assert all(r["params"]["api_token"] == "***" for r in rows)
    assert all(r["created_at"].endswith("+09:00") for r in rows)  # the batch's timezone
    utc = json.loads(cli("instances", "--json", "--tz", "UTC").stdout)["instances"]
    assert all(r["created_at"].endswith("+00:00") for r in utc)


def test_logs_of_a_run_and_purge(cli: Cli) -> None:
    setup(cli)
    run = cli("run", "daily")
    assert run.code == 0, run.report
    logs = cli("logs", "1")
    assert logs.code == 0
    assert "talk attempt 1" in logs.out and "working on" in logs.out
    assert "vendor.sdk" in logs.out and "hunter2-secret" not in logs.stdout
    (line,) = cli("logs", "1", "talk", "--json").stdout.splitlines()
    assert json.loads(line)["step"] == "talk"
    assert cli("logs", "1", "--follow").code == 0  # a final instance: returns at once
    assert cli("logs", "99").code == 2

    shown = json.loads(cli("show", "1", "--json").stdout)
    assert shown["status"] == "succeeded" and shown["steps"][0]["key"] == "talk"
    dry = cli("purge", "--older-than", "0s", "--dry-run")
    assert "would delete 1 instances" in dry.out
    assert cli.count("batch_instance") == 1
    assert cli("purge", "--older-than", "0s", "--status", "failed").out.startswith("deleted 0")
    done = cli("purge", "--older-than", "0s", "--batch", "daily")
    assert done.code == 0 and "deleted 1 instances" in done.out
    assert cli.count("batch_instance") == 0 and cli.count("batch_step_log") == 0
    refused = cli("purge", "--older-than", "0s", "--status", "running")
    assert refused.code == 2 and "only finished instances" in refused.err
    assert cli("purge", "--older-than", "ninety days").code == 2


def test_delete_keeps_history_or_purges_it(cli: Cli) -> None:
    setup(cli)
    assert cli("run", "daily").code == 0
    deleted = cli("delete", "daily")
    assert deleted.code == 0 and "stay readable" in deleted.out
    assert json.loads(cli("batches", "--json").stdout)["batches"] == []
    assert cli("show", "1").code == 0
    assert cli("run", "daily").code == 2
    assert cli("delete", "daily", "--purge").code == 0
    assert cli("show", "1").code == 2


def test_conventions(cli: Cli) -> None:
    version = cli("--version")
    assert version.code == 0 and version.out.startswith("stepline ")
    assert "STEPLINE_DB" in cli("instances", "--help").out
    assert "--install-completion" in cli("--help").out
    setup(cli)
    nxt = json.loads(cli("next", "daily", "-n", "2", "--json").stdout)
    assert len(nxt["fire_times"]) == 2 and nxt["fire_times"][0].endswith("T02:00:00+09:00")
    assert cli("next", "daily", "--tz", "Nowhere/Land").code == 2


def test_a_missing_driver_names_the_extra(cli: Cli, tmp_path: Path) -> None:
    """As on a base install: the psycopg package cannot be imported."""
    blocked = tmp_path / "blocked" / "psycopg"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n"
    )
    env = {**cli.env(), "PYTHONPATH": str(blocked.parent)}
    env["STEPLINE_DB"] = "postgresql://nobody@127.0.0.1:1/nothing"
    proc = subprocess.run(
        [str(STEPLINE), "instances"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    message = " ".join(proc.stderr.split())
    assert message.startswith("error: database URL")
    assert "needs a driver that is not installed (psycopg): pip install 'stepline[postgres]'" in (
        message
    )
    assert "Traceback" not in proc.stderr


def test_an_invalid_setting_is_refused_at_start(cli: Cli, tmp_path: Path) -> None:
    env = {**cli.env(), "STEPLINE_RETENTION": "forever"}
    proc = subprocess.run(
        [str(STEPLINE), "instances"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "STEPLINE_RETENTION" in proc.stderr and "Traceback" not in proc.stderr
    assert os.environ.get("STEPLINE_RETENTION") is None
