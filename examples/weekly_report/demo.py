"""The offline demo in one command: sample API + SQLite + ``stepline run``.

    python -m examples.weekly_report.demo [--workdir .weekly_report_demo] [-- --param k=v ...]

Starts the sample API (sample_api.py) on a free local port, creates the SQLite business
database with the five sample farms, points the pipeline's settings at both, and runs
``stepline run examples/weekly_report/weekly_report_sqlite.yaml`` as a user would. Prints
the report rows and TS_INS_JOB_LOG afterwards. Exits with stepline's exit code.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from examples.weekly_report.sample_api import serve
from examples.weekly_report.setup_db import apply_schema, seed_farms

HERE = Path(__file__).parent
REPO = HERE.parent.parent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the weekly report offline on SQLite")
    parser.add_argument("--workdir", default=".weekly_report_demo", type=Path)
    parser.add_argument("stepline_args", nargs="*", help="extra `stepline run` arguments")
    args = parser.parse_args(argv)
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    business = f"sqlite:///{workdir / 'weekly_report.db'}"

    engine = sa.create_engine(business)
    apply_schema(engine)
    seed_farms(engine)
    engine.dispose()

    server, base = serve()
    env = {
        **os.environ,
        "STEPLINE_DB": f"sqlite:///{workdir / 'stepline.db'}",
        "STEPLINE_CONNECTIONS__REPORT": business,
        "WEEKLY_STATS_URL": f"{base}/stats",
        "WEEKLY_STATS_KEY": "demo-key-not-secret",
        "WEEKLY_OPEN_METEO_URL": f"{base}/v1/forecast",
        "WEEKLY_OPEN_METEO_ARCHIVE_URL": f"{base}/v1/archive",
        "WEEKLY_KMA_URL": f"{base}/getVilageFcst",
        "WEEKLY_ALERT_WEBHOOK_URL": f"{base}/hook",
    }
    stepline = shutil.which("stepline") or "stepline"
    command = [stepline, "run", "examples/weekly_report/weekly_report_sqlite.yaml"]
    print(f"sample API on {base}; business database {business}", flush=True)
    print("$ " + " ".join([*command[1:], *args.stepline_args]), flush=True)
    try:
        code = subprocess.call([*command, *args.stepline_args], cwd=REPO, env=env)
    finally:
        server.shutdown()
        server.server_close()

    engine = sa.create_engine(business)
    with engine.connect() as conn:
        print("\nTR_WEEKLY_FARM_REPORT (latest week):")
        for row in conn.execute(
            sa.text(
                "SELECT farm_id, item_code, item_value FROM TR_WEEKLY_FARM_REPORT "
                "WHERE week_start = (SELECT MAX(week_start) FROM TR_WEEKLY_FARM_REPORT) "
                "ORDER BY farm_id, item_code"
            )
        ):
            print(f"  {row.farm_id}  {row.item_code:<24} {row.item_value}")
        print("\nTS_INS_JOB_LOG:")
        for row in conn.execute(
            sa.text(
                "SELECT job_name, status, rows_written, message FROM TS_INS_JOB_LOG "
                "ORDER BY log_id DESC LIMIT 6"
            )
        ):
            print(f"  {row.job_name:<28} {row.status:<8} {row.rows_written!s:<5} {row.message}")
    engine.dispose()
    return code


if __name__ == "__main__":
    sys.exit(main())
