"""Acceptance: the real ``stepline`` command, run as a user runs it, one process per call.

Each test works in its own ``tmp_path`` (the working directory) with its own SQLite file;
see conftest.py for the ``cli`` fixture. Runner modules come from ``fixtures/steps.py``,
copied into the working directory as the module ``steps``.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "diamond"


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the rich tables in ``text``, as lists of stripped cells."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]


def step_rows(show_stdout: str) -> dict[str, list[str]]:
    """``stepline show``'s step table (not the "earlier attempts" one), by step key."""
    return {r[0]: r for r in table_rows(show_stdout.split("earlier attempts")[0])}


def row(text: str, first: str) -> list[str]:
    """The one table row whose first cell is ``first``."""
    found = [r for r in table_rows(text) if r[0] == first]
    assert len(found) == 1, f"expected one row {first!r} in:\n{text}"
    return found[0]


def no_traceback(result) -> bool:
    return "Traceback" not in result.stdout + result.stderr


# -- 1. the README's main job ------------------------------------------------------------------


def _copy_example(root: Path) -> Path:
    """The README's examples/diamond, copied into the test's directory."""
    target = root / "examples" / "diamond"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _assert_threshold_90(cli, instance_id: int) -> None:
    ((params,),) = cli.rows(f"SELECT params FROM batch_instance WHERE id = {instance_id}")
    stored = json.loads(params)
    assert stored == {"period": "WEEK", "humidity_threshold": 90}
    assert type(stored["humidity_threshold"]) is int  # a number, not the string "90"
    ((payload,),) = cli.rows(
        "SELECT result_payload FROM batch_step_result "
        f"WHERE batch_instance_id = {instance_id} AND step_key = 'humidity_alerts'"
    )
    assert json.loads(payload)["threshold"] == 90  # the runner saw the overridden param


def test_readme_diamond_runs_and_is_listed(cli) -> None:
    # The README's own command, from a directory that does not hold the runners: they are
    # imported from the definition file's directory.
    example = _copy_example(cli.root)
    run = cli("run", "examples/diamond/farm_readings.yaml")
    assert run.code == 0, run.report
    lines = run.stdout.strip().splitlines()
    assert re.match(r"instance 1 of farm_readings started\b", lines[0]), run.report
    assert re.match(r"instance 1 of farm_readings succeeded\b", lines[-1]), run.report

    show, instances, batches, retry = cli.parallel(
        (["show", "1"], None), (["instances"], None), (["batches"], None), (["retry", "1"], None)
    )
    assert show.code == 0, show.report
    assert show.stdout.startswith("instance 1  batch farm_readings v1  succeeded"), show.report
    steps = step_rows(show.stdout)
    assert set(steps) == {"load", "temperature_stats", "humidity_alerts", "report"}, show.report
    assert all(r[1] == "succeeded" and r[2] == "1" for r in steps.values()), show.report
    # The report joined both branches; its result is shown (shortened) from result_payload.
    assert '"period": "WEEK"' in steps["report"][4], show.report

    assert instances.code == 0, instances.report
    assert row(instances.stdout, "1")[1:5] == ["farm_readings", "1", "succeeded", "cli"]

    assert batches.code == 0, batches.report
    assert row(batches.stdout, "farm_readings")[1:5] == ["1", "", "Asia/Seoul", "4"]

    # A succeeded instance is final (SPEC guarantee 5): retry is refused, naming the way out.
    assert retry.code == 2, retry.report
    assert "instance 1" in retry.err and "succeeded" in retry.err, retry.report
    assert "anew" in retry.err and "stepline run farm_readings" in retry.err, retry.report
    assert no_traceback(retry), retry.report
    assert cli.rows("SELECT id, status, trigger FROM batch_instance") == [(1, "succeeded", "cli")]

    # The stored batch, by name, with a param read as YAML; runners import from the cwd.
    again = cli("run", "farm_readings", "--param", "humidity_threshold=90")
    assert again.code == 0, again.report
    assert again.stdout.startswith("instance 2 of farm_readings started (version 1)"), again.report
    assert re.search(r"^instance 2 of farm_readings succeeded\b", again.stdout, re.M), again.report
    _assert_threshold_90(cli, 2)
    assert not (example / "stepline.db").exists()  # STEPLINE_DB was used, not the default


def test_readme_quick_start_run_by_name_from_same_directory(cli) -> None:
    _copy_example(cli.root)
    first = cli("run", "examples/diamond/farm_readings.yaml")
    assert first.code == 0, first.report
    second = cli("run", "farm_readings", "--param", "humidity_threshold=90")
    assert second.code == 0, second.report
    _assert_threshold_90(cli, 2)


# -- 2. a failing batch ------------------------------------------------------------------------


def test_failing_step_fails_the_instance(cli) -> None:
    cli.copy_fixture("steps.py")
    cli.copy_fixture("failing.yaml")
    run = cli("run", "failing.yaml")
    assert run.code == 1, run.report
    assert run.stdout.startswith("instance 1 of failing started"), run.report
    assert re.search(r"^instance 1 of failing failed\b", run.stdout, re.M), run.report
    assert "stepline show 1" in run.stdout, run.report

    show = cli("show", "1")
    assert show.code == 0, show.report
    assert show.stdout.startswith("instance 1  batch failing v1  failed"), show.report
    steps = step_rows(show.stdout)
    assert list(steps) == ["start", "explode", "after"], show.report
    assert steps["start"][1] == "succeeded", show.report
    assert steps["explode"][1] == "failed", show.report
    assert steps["explode"][4] == "ValueError: the sensor feed is empty", show.report
    assert "second line" not in show.stdout, show.report  # only the error's first line
    assert steps["after"][1] == "upstream_failed", show.report
    assert steps["after"][2] == "0", show.report  # never attempted
    assert cli.rows("SELECT status FROM batch_instance") == [("failed",)]


def test_show_prints_error_text_verbatim(cli) -> None:
    cli.copy_fixture("steps.py")
    cli.write("bracket.yaml", "name: bracket\nsteps:\n  - key: a\n    runner: steps:bracketed\n")
    run = cli("run", "bracket.yaml")
    assert run.code == 1, run.report
    show = cli("show", "1")
    assert show.code == 0, show.report
    assert "FileNotFoundError: cannot open [/srv/in.csv]" in show.stdout, show.report


# -- 3. invalid definitions: refused by validate and run, nothing written ----------------------

STEP_A = "  - key: a\n    runner: steps:ok\n"


@dataclass(frozen=True)
class Invalid:
    id: str
    text: str
    step: str | None  # the step the message must name
    expect: tuple[str, ...]  # regexes that must all match stderr (whitespace collapsed)

    @property
    def file(self) -> str:
        return f"{self.id}.yaml"


INVALID = [
    Invalid(
        "duplicate_keys",
        f"name: dup\nsteps:\n{STEP_A}{STEP_A}",
        "a",
        (r"duplicate step key 'a'",),
    ),
    Invalid(
        "unknown_next_step",
        f"name: unk\nsteps:\n{STEP_A}    next_steps: [ghost]\n",
        "a",
        (r"next_steps names unknown step 'ghost'",),
    ),
    Invalid(
        "cycle",
        "name: cyc\nsteps:\n"
        "  - {key: a, runner: 'steps:ok', next_steps: [b]}\n"
        "  - {key: b, runner: 'steps:ok', next_steps: [c]}\n"
        "  - {key: c, runner: 'steps:ok', next_steps: [a]}\n",
        None,
        (r"cycle: (a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)",),
    ),
    Invalid(
        "runner_module_missing",
        "name: nomod\nsteps:\n  - key: a\n    runner: no_such_module_xyz:ok\n",
        "a",
        (r"no_such_module_xyz:ok", r"cannot import module 'no_such_module_xyz'"),
    ),
    Invalid(
        "runner_function_missing",
        "name: nofn\nsteps:\n  - key: a\n    runner: steps:missing_fn\n",
        "a",
        (r"steps:missing_fn", r"no attribute 'missing_fn'"),
    ),
    Invalid(
        "timeout_duration",
        f"name: dur\nsteps:\n{STEP_A}    timeout: 10 minutes\n",
        "a",
        (r"timeout: invalid duration '10 minutes'",),
    ),
    Invalid(
        "backoff_duration",
        f"name: backoff\nsteps:\n{STEP_A}    retry: {{backoff: soon}}\n",
        "a",
        (r"retry\.backoff: invalid duration 'soon'",),
    ),
    Invalid(
        "yaml_syntax",
        "name: broken\nsteps:\n  - key: a\n    runner: [steps:ok\n",
        None,
        (r"not valid YAML", r"line 4"),
    ),
    Invalid(
        "trigger_rule",
        f"name: rule\nsteps:\n{STEP_A}    trigger_rule: sometimes\n",
        "a",
        (r"unknown trigger_rule 'sometimes'", r"one_failed"),
    ),
    Invalid(
        "cron",
        f'name: badcron\ncron: "99 * * * *"\nsteps:\n{STEP_A}',
        None,
        (re.escape('invalid cron "99 * * * *"'),),
    ),
    Invalid(
        "timezone",
        f"name: badtz\ntimezone: Mars/Olympus\nsteps:\n{STEP_A}",
        None,
        (r"unknown timezone 'Mars/Olympus'",),
    ),
]


MANY = Invalid(
    "many_problems",
    "name: many\ntimezone: Nowhere/City\nsteps:\n"
    "  - {key: a, runner: 'steps:ok', next_steps: [ghost], timeout: 10 minutes}\n"
    "  - {key: a, runner: 'steps:ok'}\n"
    "  - {key: b, runner: 'steps:nope', trigger_rule: sometimes}\n",
    None,
    (
        r"unknown timezone 'Nowhere/City'",
        r"step 'a': timeout: invalid duration '10 minutes'",
        r"step 'a': duplicate step key 'a'",
        r"step 'a': next_steps names unknown step 'ghost'",
        r"step 'b': runner 'steps:nope'",
        r"step 'b': unknown trigger_rule 'sometimes'",
    ),
)
BAD_IN_DIR = f"name: bad\nsteps:\n{STEP_A}    next_steps: [ghost]\n"


@pytest.fixture(scope="module")
def refusals(make_cli, run_concurrently) -> dict[str, tuple[object, object]]:
    """Every invocation of this section, started at once (each in its own directory and DB).

    - ``validate``: one ``stepline validate FILE FILE ...`` over every invalid file;
    - ``run:<case>``: ``stepline run FILE`` per invalid file (one problem each);
    - ``validate-dir`` / ``apply-dir``: a directory holding one good and one bad file.
    """
    jobs: dict[str, tuple[object, list[str], Path | None]] = {}
    checks = make_cli("validate")
    checks.copy_fixture("steps.py")
    for case in [*INVALID, MANY]:
        checks.write(case.file, case.text)
    for case in INVALID:
        own = make_cli(case.id)
        own.copy_fixture("steps.py")
        own.write(case.file, case.text)
        jobs[f"run:{case.id}"] = (own, ["run", case.file], None)
    files = [case.file for case in [*INVALID, MANY]]
    jobs["validate"] = (checks, ["validate", *files], checks.root / "validate.db")

    mixed = make_cli("mixed")
    mixed.copy_fixture("steps.py")
    mixed.copy_fixture("good.yaml", "defs/good.yaml")
    mixed.write("defs/bad.yaml", BAD_IN_DIR)
    jobs["validate-dir"] = (mixed, ["validate", "defs"], mixed.root / "validate.db")
    jobs["apply-dir"] = (mixed, ["apply", "defs"], None)

    results = run_concurrently(list(jobs.values()))
    return {
        name: (job[0], result) for (name, job), result in zip(jobs.items(), results, strict=True)
    }


def problems_of(stderr: str, file: str) -> str:
    """The reported problems (``error: FILE: ...``, whitespace collapsed) of one file."""
    chunks = " ".join(stderr.split()).split("error: ")
    return " | ".join(c.strip() for c in chunks if c.startswith(f"{file}:"))


def assert_refused(result, case: Invalid) -> None:
    assert result.code == 2, result.report
    problems = problems_of(result.stderr, case.file)
    assert problems, result.report  # stderr names the file
    if case.step is not None:
        assert f"{case.file}: step {case.step!r}:" in problems, result.report
    for pattern in case.expect:
        assert re.search(pattern, problems), f"{pattern!r} in {result.report}"
    assert no_traceback(result), result.report


@pytest.mark.parametrize("case", [*INVALID, MANY], ids=lambda c: c.id)
def test_validate_reports_the_problem(refusals, case: Invalid) -> None:
    checks, validate = refusals["validate"]
    assert_refused(validate, case)
    assert f"{case.file}: ok" not in validate.out, validate.report
    assert not (checks.root / "validate.db").exists()  # validate never touches a database
    assert not (checks.root / "stepline.db").exists()


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_run_refuses_an_invalid_file_and_writes_nothing(refusals, case: Invalid) -> None:
    own, run = refusals[f"run:{case.id}"]
    assert_refused(run, case)
    assert "started" not in run.stdout, run.report
    assert own.nothing_written()


def test_every_problem_of_a_file_is_reported(refusals) -> None:
    # test_validate_reports_the_problem[many_problems] checks each message; here, no more.
    _, validate = refusals["validate"]
    problems = problems_of(validate.stderr, MANY.file)
    assert problems.count(f"{MANY.file}:") == len(MANY.expect), validate.report


def test_validate_directory_with_good_and_bad_files(refusals) -> None:
    mixed, validate = refusals["validate-dir"]
    assert validate.code == 2, validate.report
    assert validate.out == ("defs/good.yaml: ok (good, 1 steps) 1 definition valid, 1 invalid"), (
        validate.report
    )
    assert problems_of(validate.stderr, "defs/bad.yaml") == (
        "defs/bad.yaml: step 'a': next_steps names unknown step 'ghost'"
    ), validate.report
    assert "good.yaml" not in validate.stderr, validate.report
    assert not (mixed.root / "validate.db").exists()


def test_apply_directory_is_all_or_nothing(refusals) -> None:
    mixed, apply = refusals["apply-dir"]
    assert apply.code == 2, apply.report
    problem = "defs/bad.yaml: step 'a': next_steps names unknown step 'ghost'"
    assert problem in apply.err, apply.report
    assert "version" not in apply.stdout, apply.report
    assert mixed.nothing_written()  # the good file was not stored either


def test_yaml_syntax_error_message_is_verbatim(refusals) -> None:
    _, validate = refusals["validate"]
    problems = problems_of(validate.stderr, "yaml_syntax.yaml")
    assert "not valid YAML" in problems, validate.report
    assert "runner: [steps:ok" in problems, validate.report
    assert "expected ',' or ']'" in problems, validate.report


# -- 4. operations errors ----------------------------------------------------------------------

OPERATIONS = {
    "show_unknown_instance": ["show", "999"],
    "run_unknown_batch": ["run", "no_such_batch"],
    "param_without_value": ["run", "good.yaml", "--param", "novalue"],
    "database_unavailable": ["run", "x", "--db", "postgresql://nobody@127.0.0.1:1/x"],
}


@pytest.fixture(scope="module")
def operations(make_cli, run_concurrently) -> dict[str, tuple[object, object]]:
    """Each refused operation in a fresh directory and database, started at once."""
    clis = {name: make_cli(name) for name in OPERATIONS}
    for own in clis.values():
        own.copy_fixture("steps.py")
        own.copy_fixture("good.yaml")
    results = run_concurrently([(clis[name], args, None) for name, args in OPERATIONS.items()])
    return {name: (clis[name], r) for name, r in zip(OPERATIONS, results, strict=True)}


def test_show_unknown_instance(operations) -> None:
    _, show = operations["show_unknown_instance"]
    assert show.code == 2, show.report
    assert "instance 999 does not exist" in show.err, show.report
    assert no_traceback(show), show.report


def test_run_unknown_batch_suggests_apply(operations) -> None:
    own, run = operations["run_unknown_batch"]
    assert run.code == 2, run.report
    assert "'no_such_batch' does not exist" in run.err, run.report
    assert "stepline apply" in run.err, run.report
    assert no_traceback(run), run.report
    assert own.nothing_written()


def test_param_without_value_is_refused(operations) -> None:
    own, run = operations["param_without_value"]
    assert run.code == 2, run.report
    assert "'novalue'" in run.err and "key=value" in run.err, run.report
    assert no_traceback(run), run.report
    assert own.nothing_written()


def test_unreachable_database_exits_3_without_traceback(operations) -> None:
    _, run = operations["database_unavailable"]
    assert run.code == 3, run.report
    assert "unavailable" in run.err, run.report
    assert "127.0.0.1" in run.err, run.report
    assert no_traceback(run), run.report


# -- 5 and 6. apply, versions and cron fire times ---------------------------------------------


def test_apply_versions_and_next_fire_times(cli) -> None:
    cli.copy_fixture("steps.py")
    definition = cli.copy_fixture("weekly_report.yaml", "defs/weekly_report.yaml")
    before = datetime.now(UTC)
    first = cli("apply", "defs")
    assert first.code == 0, first.report
    assert first.stdout.strip() == "weekly_report: version 1", first.report

    batches, nxt = cli.parallel((["batches"], None), (["next", "weekly_report", "-n", "3"], None))
    assert batches.code == 0, batches.report
    listed = row(batches.stdout, "weekly_report")
    assert listed[1:5] == ["1", "0 0 2 * * 1", "Asia/Seoul", "1"], batches.report

    # Mondays 02:00 in Seoul (the seed's JOB_INS_WEEKLY_REPORT), printed in that timezone.
    assert nxt.code == 0, nxt.report
    lines = nxt.stdout.strip().splitlines()
    assert len(lines) == 3, nxt.report
    fires = [datetime.fromisoformat(line.strip()) for line in lines]
    for fire in fires:
        assert fire.isoformat().endswith("T02:00:00+09:00"), nxt.report
        assert fire.weekday() == 0, nxt.report
    assert before < fires[0] <= before + timedelta(days=7), nxt.report
    assert [b - a for a, b in itertools.pairwise(fires)] == [timedelta(days=7)] * 2, nxt.report
    # batches shows the same next fire time.
    assert listed[5] == lines[0].strip(), batches.report + nxt.report

    again = cli("apply", "defs")
    assert again.code == 0, again.report
    # Unchanged: the same version, not a new one.
    assert again.stdout.strip() == "weekly_report: version 1", again.report

    definition.write_text(
        definition.read_text().replace("period: WEEK", "period: MONTH"), encoding="utf-8"
    )
    changed = cli("apply", "defs")
    assert changed.code == 0, changed.report
    assert changed.stdout.strip() == "weekly_report: version 2", changed.report
    assert cli.rows("SELECT name, version FROM batch_definition") == [("weekly_report", 2)]
