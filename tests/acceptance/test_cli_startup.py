"""Acceptance: what ``stepline`` loads to start, and what ``stepline run`` prints for a wide
DAG when its output is a pipe (a file, a CI log)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import UTC, datetime
from io import StringIO

import pytest
from rich.console import Console

from conftest import STEPLINE, Cli
from stepline.cli.progress import LINE_EVERY, Progress
from stepline.core.states import StepStatus
from stepline.engine.orchestrator import StepEvent

# What a command may need, and --help must not load: the database layer, the settings
# model, HTTP, logging, migrations, the engine and the service facade.
HEAVY = (
    "sqlalchemy",
    "pydantic",
    "httpx",
    "structlog",
    "alembic",
    "stepline.engine",
    "stepline.stores",
    "stepline.service",
    "stepline.settings",
)


def imported(cli: Cli, *args: str, env: dict[str, str] | None = None) -> tuple[set[str], str]:
    """The modules ``stepline ARGS`` imported (Python's -X importtime, on stderr), and its
    output."""
    proc = subprocess.run(
        [str(STEPLINE), *args],
        cwd=cli.root,
        env={**cli.env(), "PYTHONPROFILEIMPORTTIME": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", proc.stderr, re.M))
    assert "typer" in names, proc.stderr[-2000:]  # the trace was read
    return names, proc.stdout


COMPLETE = {"_STEPLINE_COMPLETE": "complete_bash", "COMP_WORDS": "stepline ru", "COMP_CWORD": "1"}


@pytest.mark.parametrize(
    ("args", "env", "shown"),
    [
        (["--help"], None, "Durable DAG batches"),
        (["--version"], None, "stepline "),
        ([], COMPLETE, "run"),  # shell completion
    ],
    ids=["help", "version", "completion"],
)
def test_help_version_and_completion_load_no_database_settings_http_or_engine(
    cli: Cli, args: list[str], env: dict[str, str] | None, shown: str
) -> None:
    names, out = imported(cli, *args, env=env)
    assert shown in out
    loaded = sorted(n for n in names if n.startswith(HEAVY))
    assert not loaded, loaded


# What `stepline run` on SQLite must not load: Alembic (a new database's tables are created
# from the declared schema, an existing one is only checked), the dialect packages of the
# other databases (stores/schema.py picks their types when they are in use), and pydantic
# (only the HTTP API's models need it; settings and option parsing do not).
NOT_ON_SQLITE = (
    "alembic",
    "pydantic",
    "sqlalchemy.dialects.postgresql",
    "sqlalchemy.dialects.mysql",
    "sqlalchemy.dialects.oracle",
)
DIAMOND = """\
name: diamond
steps:
  - {key: load, runner: 'steps:noop', next_steps: [left, right]}
  - {key: left, runner: 'steps:noop', next_steps: [join]}
  - {key: right, runner: 'steps:noop', next_steps: [join]}
  - {key: join, runner: 'steps:noop'}
"""


@pytest.mark.parametrize("database", ["new", "existing"])
def test_run_on_sqlite_loads_neither_alembic_pydantic_nor_other_databases_dialects(
    cli: Cli, database: str
) -> None:
    cli.write("steps.py", STEPS)
    cli.write("diamond.yaml", DIAMOND)
    if database == "existing":
        assert cli("run", "diamond.yaml").code == 0
    names, out = imported(cli, "run", "diamond.yaml")
    assert "succeeded" in out and "sqlalchemy.dialects.sqlite" in names
    loaded = sorted(n for n in names if n.startswith(NOT_ON_SQLITE))
    assert not loaded, loaded


GC_STATE = """\
import gc
import json
from pathlib import Path


def state(ctx):
    Path("gc-state.json").write_text(
        json.dumps({"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()})
    )
"""


def test_steps_run_with_the_garbage_collector_on_and_start_up_frozen_out_of_it(
    cli: Cli,
) -> None:
    """`main` starts without the collector (start-up objects live as long as the process);
    when the command opens its service, they are frozen and the collector is on again, so a
    long run or `serve` collects what its steps leave behind."""
    cli.write("gc_state.py", GC_STATE)
    cli.write("gc.yaml", "name: gc\nsteps:\n  - {key: s, runner: 'gc_state:state'}\n")
    assert cli("run", "gc.yaml").code == 0
    state = json.loads((cli.root / "gc-state.json").read_text())
    assert state["enabled"] is True and state["frozen"] > 10_000, state


def test_a_command_still_refuses_an_invalid_setting_and_help_shows_stepline_db(
    cli: Cli,
) -> None:
    refused = cli("instances", env={"STEPLINE_LOG_LEVEL": "chatty"})
    assert refused.code == 2 and "invalid setting STEPLINE_LOG_LEVEL" in refused.err
    helped = cli("instances", "--help")
    assert helped.code == 0 and "STEPLINE_DB" in helped.out, helped.report


def test_a_commands_help_reads_the_settings_but_loads_no_database_layer(cli: Cli) -> None:
    """The settings are read and logging set up before a command's --help (the root
    callback runs first); the secrets that log lines are redacted of are found at the first
    line, so no SQLAlchemy is imported to parse their URLs."""
    names, out = imported(cli, "instances", "--help")
    assert "STEPLINE_DB" in out and "stepline.settings" in names
    loaded = sorted(
        n
        for n in names
        if n.startswith(("sqlalchemy", "alembic", "stepline.stores.sqlalchemy", "stepline.service"))
    )
    assert not loaded, loaded


WIDTH = 400
STEPS = """\
import time


def noop(ctx):
    return None


def slow(ctx):
    time.sleep(0.002)


def boom(ctx):
    raise ValueError("no reading for this farm")
"""


def fan_out(width: int) -> str:
    keys = [f"f{i}" for i in range(width)]
    lines = ["name: wide", "steps:", f"  - {{key: root, runner: 'steps:noop', next_steps: {keys}}}"]
    for i, key in enumerate(keys):
        runner = "boom" if i == 7 else "slow"
        lines.append(f"  - {{key: {key}, runner: 'steps:{runner}', next_steps: [join]}}")
    lines.append("  - {key: join, runner: 'steps:noop', trigger_rule: all_done}")
    return "\n".join(lines) + "\n"


def test_a_piped_wide_fan_out_prints_summary_lines_and_names_the_failed_step(cli: Cli) -> None:
    cli.write("steps.py", STEPS)
    cli.write("wide.yaml", fan_out(WIDTH))

    run = cli("run", "wide.yaml")

    assert run.code == 1, run.report
    lines = run.stdout.splitlines()
    # Not a line per step event (there are over 1,200): a summary at most once a second,
    # the failures, the start and the result.
    assert len(lines) < WIDTH / 10, run.report
    assert re.search(r"^\s+[0-9.]+s\s+f7\s+failed$", run.stdout, re.M), run.report
    final = re.search(r"^instance 1 of wide failed in ([0-9.]+)s \((.*)\)$", run.stdout, re.M)
    assert final is not None, run.report
    assert final.group(2) == f"{WIDTH + 2}/{WIDTH + 2} done, 0 running, 1 failed", run.report
    summaries = [line for line in lines if re.search(r"\d+/\d+ done", line)]
    assert len(summaries) <= float(final.group(1)) / LINE_EVERY + 2, run.report


def event(key: str, status: StepStatus, index: int = -1) -> StepEvent:
    return StepEvent(1, key, index, status, 1, datetime.now(UTC), label=None)


def test_summary_lines_are_rate_limited_and_failures_are_not() -> None:
    out = StringIO()
    keys = [f"s{i}" for i in range(100)]
    progress = Progress(Console(file=out, width=200, force_terminal=False), keys)
    assert progress.wide

    for key in keys[:50]:
        progress(event(key, StepStatus.RUNNING))
        progress(event(key, StepStatus.SUCCEEDED))
    progress(event("s50", StepStatus.FAILED))
    assert progress.lines == 1, out.getvalue()  # the failure alone
    assert re.search(r"s50\s+failed", out.getvalue())

    time.sleep(LINE_EVERY + 0.05)
    for key in keys[51:]:
        progress(event(key, StepStatus.SUCCEEDED))
    progress.close()

    text = out.getvalue()
    assert progress.lines == 2, text  # and one summary, at the first event after a second
    assert re.search(r"52/100 done, 0 running, 1 failed$", text.splitlines()[-1]), text


@pytest.mark.parametrize("width", [4, 100], ids=["table", "summary"])
def test_on_a_terminal_the_display_is_drawn_apart_and_ends_with_the_last_state(
    width: int,
) -> None:
    out = StringIO()
    keys = [f"s{i}" for i in range(width)]
    progress = Progress(Console(file=out, width=120, force_terminal=True), [*keys, "each"])
    for key in keys:
        progress(event(key, StepStatus.RUNNING))
    progress(StepEvent(1, "each", -1, StepStatus.RUNNING, 0, datetime.now(UTC), items=3))
    for index, status in enumerate([StepStatus.SUCCEEDED, StepStatus.FAILED]):
        progress(StepEvent(1, "each", index, status, 1, datetime.now(UTC), label=f"F00{index}"))
    for key in keys[1:]:
        progress(event(key, StepStatus.SUCCEEDED))
    progress(event(keys[0], StepStatus.FAILED))
    assert progress.lines == 0  # no line per event: the display is redrawn by its thread
    progress.close()

    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    title = f"{width}/{width + 1} done, 1 running, 1 failed"  # `each` still runs
    text = " ".join(drawn[drawn.rindex(title) :].split())
    assert "3 items: 1 succeeded, 1 failed" in text, text
    assert "each[F001]" in text, text  # the failed item, named
    assert "s0" in text, text  # the failed step
