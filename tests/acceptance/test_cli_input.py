"""Acceptance: what a new user types that the CLI must read right or refuse clearly.

``--param`` values stored as JSON, ``validate`` over a directory tree, and settings that
would do nothing refused by every command with exit code 2.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import WIDTH
from stepline.cli.app import app, db_app

REPO = Path(__file__).resolve().parents[2]


def no_traceback(result) -> bool:
    return "Traceback" not in result.stdout + result.stderr


# -- --param ------------------------------------------------------------------------------


def test_param_values_are_stored_as_json(cli) -> None:
    cli.copy_fixture("steps.py")
    cli.copy_fixture("good.yaml")

    run = cli(
        "run",
        "good.yaml",
        "--param",
        "base_date=2024-06-05",
        "--param",
        "at=2024-06-05 10:00:00+09:00",
        "--param",
        "n=5",
        "--param",
        'code="007"',
        "--param",
        "farms=[F001, F002]",
    )

    assert run.code == 0, run.report
    ((params,),) = cli.rows("SELECT params FROM batch_instance")
    assert json.loads(params) == {
        "base_date": "2024-06-05",
        "at": "2024-06-05T10:00:00+09:00",
        "n": 5,
        "code": "007",
        "farms": ["F001", "F002"],
    }


@pytest.mark.parametrize("value", [".nan", "!!binary aGVsbG8=", "{1: a}"])
def test_a_param_json_cannot_hold_is_refused(cli, value: str) -> None:
    cli.copy_fixture("steps.py")
    cli.copy_fixture("good.yaml")

    run = cli("run", "good.yaml", "--param", f"x={value}")

    assert run.code == 2, run.report
    assert f"--param x={value}" in run.err, run.report
    assert no_traceback(run), run.report
    assert cli.nothing_written()


# -- validate ---------------------------------------------------------------------------------


def test_validate_walks_the_examples_tree(cli) -> None:
    shutil.copytree(
        REPO / "examples", cli.root / "examples", ignore=shutil.ignore_patterns("__pycache__")
    )

    check = cli("validate", "examples/")

    assert check.code == 0, check.report
    assert "examples/diamond/farm_readings.yaml: ok" in check.out, check.report
    assert "examples/weekly_report/weekly_report.yaml: ok" in check.out, check.report
    assert check.out.endswith("3 definitions valid"), check.report
    assert not (cli.root / "stepline.db").exists()


def test_validate_counts_invalid_definitions_in_subfolders(cli) -> None:
    cli.copy_fixture("steps.py")
    cli.copy_fixture("good.yaml", "defs/a/good.yaml")
    cli.write("defs/b/deeper/bad.yaml", "name: bad\nsteps: [{key: a, runner: steps:missing}]\n")

    check = cli("validate", "defs")

    assert check.code == 2, check.report
    assert "1 definition valid, 1 invalid" in check.out, check.report
    assert "defs/b/deeper/bad.yaml" in check.err and "'missing'" in check.err, check.report


def test_validate_of_a_folder_without_definitions_exits_2(cli) -> None:
    cli.write("empty/README.md", "# nothing to check\n")
    (cli.root / "none").mkdir()

    results = cli.parallel((["validate", "empty"], None), (["validate", "none"], None))

    for check, folder in zip(results, ("empty", "none"), strict=True):
        assert check.code == 2, check.report
        assert f"{folder}: no .yaml, .yml or .json definition" in check.err, check.report
        assert no_traceback(check), check.report


# -- settings that would do nothing ------------------------------------------------------------

BAD_SETTINGS = {
    "STEPLINE_DISPATCHER": (
        "threads",
        "unknown dispatcher 'threads'; valid values: direct, celery",
    ),
    "STEPLINE_LOG_LEVEL": (
        "bogus",
        "unknown log level 'bogus'; valid values: debug, info, warning, error, critical",
    ),
    "STEPLINE_LOG_FORMAT": ("xml", "unknown log format 'xml'; valid values: console, json"),
}
ARGS = {
    "run": ["good.yaml"],
    "serve": ["good.yaml", "--port", "0"],
    "apply": ["good.yaml"],
    "validate": ["good.yaml"],
    "retry": ["1"],
    "cancel": ["1"],
    "show": ["1"],
    "next": ["good"],
}
COMMANDS = [[c.name or c.callback.__name__] for c in app.registered_commands] + [
    ["db", c.name or ""] for c in db_app.registered_commands
]


def test_every_command_refuses_settings_that_would_do_nothing(cli) -> None:
    cli.copy_fixture("steps.py")
    cli.copy_fixture("good.yaml")
    # Every command with one bad setting (in turn), and run and serve with each of them.
    names = list(BAD_SETTINGS)
    jobs = [
        (command + ARGS.get(command[0], []), names[i % len(names)])
        for i, command in enumerate(COMMANDS)
    ] + [([command, *ARGS[command]], setting) for command in ("run", "serve") for setting in names]

    def call(job: tuple[list[str], str]) -> object:
        args, setting = job
        return cli(*args, env={setting: BAD_SETTINGS[setting][0]})

    with ThreadPoolExecutor(max_workers=WIDTH) as pool:
        results = list(pool.map(call, jobs))

    assert len(COMMANDS) >= 12
    for (_args, setting), result in zip(jobs, results, strict=True):
        _, valid = BAD_SETTINGS[setting]
        assert result.code == 2, result.report
        assert f"invalid setting {setting}: {valid}" in result.err, result.report
        assert no_traceback(result), result.report
    assert not (cli.root / "stepline.db").exists()


def test_valid_settings_are_accepted_in_any_case(cli) -> None:
    cli.copy_fixture("steps.py")
    cli.copy_fixture("good.yaml")

    run = cli(
        "run",
        "good.yaml",
        env={
            "STEPLINE_DISPATCHER": "direct",
            "STEPLINE_LOG_LEVEL": "DEBUG",
            "STEPLINE_LOG_FORMAT": "JSON",
        },
    )

    assert run.code == 0, run.report


# -- input that once ended in a traceback, or in exit 0 ----------------------------------------

HUGE_ID = "99999999999999999999999"  # no 64-bit id column holds it


def test_a_definition_file_that_is_not_utf8_is_named(cli) -> None:
    cli.copy_fixture("steps.py")
    cli.copy_fixture("good.yaml", "defs/good.yaml")
    (cli.root / "defs" / "latin1.yaml").write_bytes(
        b'name: latin1\ndescription: "caf\xe9"\nsteps: [{key: a, runner: steps:ok}]\n'
    )

    results = cli.parallel(
        (["validate", "defs/latin1.yaml"], None),
        (["validate", "defs"], None),
        (["apply", "defs/latin1.yaml"], None),
        (["run", "defs/latin1.yaml"], None),
    )

    for result in results:
        assert result.code == 2, result.report
        assert "latin1.yaml: not UTF-8 text (byte 0xe9 at position 30)" in result.err, result.report
        assert no_traceback(result), result.report
    assert "1 definition valid, 1 invalid" in results[1].out, results[1].report
    assert cli.nothing_written()


def test_a_runner_module_that_calls_sys_exit_on_import_is_an_invalid_runner(cli) -> None:
    cli.write("quits.py", "import sys\nsys.exit()\n\ndef f(ctx):\n    return 1\n")
    cli.write("defs/quits.yaml", "name: quits\nsteps: [{key: a, runner: quits:f}]\n")
    cli.write(
        "defs/cycle.yaml", "name: cycle\nsteps: [{key: a, runner: quits:f, next_steps: [a]}]\n"
    )

    file, folder, target, run = cli.parallel(
        (["validate", "defs/quits.yaml"], None),
        (["validate", "defs"], None),
        (["validate", "quits:f"], None),
        (["run", "defs/quits.yaml"], None),
    )

    for result in (file, folder, target, run):
        assert result.code == 2, result.report  # it was 0: the import ended the command
        assert "importing module 'quits' failed: it called sys.exit(None)" in result.err, (
            result.report
        )
    assert "0 definitions valid, 2 invalid" in folder.out, folder.report
    assert cli.nothing_written()


def test_messages_are_printed_as_typed_without_emoji_codes(cli) -> None:
    cli.write("jobs.py", "x = 1\n")

    target, batch = cli.parallel((["apply", "jobs:cool"], None), (["pause", ":fire:"], None))

    assert target.code == 2 and "jobs:cool: module 'jobs' has no attribute 'cool'" in target.err, (
        target.report
    )
    assert batch.code == 2 and "batch ':fire:' does not exist" in batch.err, batch.report


def test_bad_ids_steps_dates_and_database_files_are_refused_by_name(cli) -> None:
    cli.copy_fixture("steps.py")
    cli.write(
        "weekly.yaml", "name: weekly\ncron: '0 2 * * 1'\nsteps: [{key: only, runner: steps:ok}]\n"
    )
    assert cli("run", "weekly.yaml").code == 0
    stored = cli.rows("SELECT id, status FROM batch_instance")
    cli.write("notes.db", "not a database\n")

    results = cli.parallel(
        *(([command, HUGE_ID], None) for command in ("show", "logs", "retry", "cancel")),
        (["logs", "1", "nosuch"], None),
        (["backfill", "weekly", "--from", "0001-01-01", "--to", "0001-01-02", "--dry-run"], None),
        (["backfill", "weekly", "--from", "9999-12-30", "--to", "9999-12-31", "--dry-run"], None),
        (["batches", "--db", f"sqlite:///{cli.root / 'notes.db'}"], None),
    )

    for result in results:
        assert result.code == 2, result.report
        assert no_traceback(result), result.report
    for result in results[:4]:
        assert "Invalid value for 'ID'" in result.err, result.report
    assert "instance 1 has no step 'nosuch'" in results[4].err, results[4].report
    for result in results[5:7]:
        assert "reaches the edge of the calendar" in result.err, result.report
    assert "notes.db cannot be used: file is not a database" in results[7].err, results[7].report
    assert (cli.root / "notes.db").read_text() == "not a database\n"
    assert cli.rows("SELECT id, status FROM batch_instance") == stored


def test_an_empty_database_url_is_refused_not_taken_for_the_default(cli) -> None:
    option, variable = cli.parallel(
        (["batches", "--db", ""], None), (["batches", "--db", "  "], None)
    )
    unset = cli("batches", env={"STEPLINE_DB": ""})

    for result in (option, variable, unset):
        assert result.code == 2, result.report
        assert "the database URL is empty" in result.err, result.report
    # The default, ./stepline.db, is what an empty URL used to open (and create).
    assert not (cli.root / "stepline.db").exists()
