"""Parsing and validating batch definitions (loader.py, definition.py); no database."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from runners_fixture import Steps, check, collect_stats

from stepline.core.dag import find_cycle, topological_order
from stepline.core.definition import (
    BatchDefinition,
    MapSpec,
    RetryPolicy,
    StepDefinition,
    batch,
    step,
)
from stepline.core.loader import (
    definition_files,
    load_definition,
    load_definitions,
    parse_definition,
    read_document,
)
from stepline.core.states import TriggerRule
from stepline.errors import DefinitionError, Problem

# The SPEC's example, verbatim.
SPEC_WEEKLY_REPORT = """\
name: weekly_report                 # [a-z0-9_-], unique
cron: "0 0 2 * * 1"                 # 6 fields with leading seconds (NestJS/Spring style) or 5 fields
timezone: Asia/Seoul                # IANA name; default from settings
max_active_instances: 1             # default 1: a batch never overlaps itself unless asked
params: {period: WEEK}              # defaults, overridden per instance
steps:
  - key: collect_stats
    runner: farm_report.steps:collect_stats   # "module:function", or a registered name
    next_steps: [check]                        # seed's nextSteps (camelCase accepted too)
    retry: {attempts: 3, backoff: 2s, max_backoff: 1m}
    timeout: 10m
  - key: collect_weather
    runner: farm_report.steps:collect_weather
    next_steps: [check]
  - key: check
    runner: farm_report.steps:check
    next_steps: [run_report]
  - key: run_report
    runner: stepline.sql:call_procedure
    with: {procedure: SP_INS_WEEK_MAIN, args: ["{{ params.period }}", null]}
  - key: alert_admin
    runner: stepline.notify:webhook
    trigger_rule: one_failed           # runs when any upstream step failed
"""  # noqa: E501
RUNNERS = {
    "farm_report.steps:collect_stats": "runners_fixture:collect_stats",
    "farm_report.steps:collect_weather": "runners_fixture:collect_weather",
    "farm_report.steps:check": "runners_fixture:check",
    "stepline.sql:call_procedure": "runners_fixture:run_report",
    "stepline.notify:webhook": "runners_fixture:alert_admin",
}
KEYS = ("collect_stats", "collect_weather", "check", "run_report", "alert_admin")


def weekly_report() -> dict[str, Any]:
    """The SPEC example as a document, with runners this test run can import."""
    doc: dict[str, Any] = yaml.safe_load(SPEC_WEEKLY_REPORT)
    for raw in doc["steps"]:
        raw["runner"] = RUNNERS[raw["runner"]]
    return doc


def minimal(*steps: object, **batch_fields: Any) -> dict[str, Any]:
    return {"name": "demo", **batch_fields, "steps": list(steps)}


def s(key: str, *nexts: str, **fields: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"key": key, "runner": "runners_fixture:check", **fields}
    if nexts:
        raw["next_steps"] = list(nexts)
    return raw


def problems_of(doc: object, source: str = "demo.yaml", **kwargs: Any) -> tuple[Problem, ...]:
    with pytest.raises(DefinitionError) as info:
        parse_definition(doc, source, **kwargs)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return info.value.problems


# --- valid documents -------------------------------------------------------------------------


def assert_is_weekly_report(definition: BatchDefinition) -> None:
    assert definition.name == "weekly_report"
    assert definition.cron == "0 0 2 * * 1"
    assert definition.timezone == "Asia/Seoul"
    assert definition.max_active_instances == 1
    assert definition.params == {"period": "WEEK"}
    assert tuple(st.key for st in definition.steps) == KEYS
    # alert_admin (one_failed, named by no step) watches the whole batch, as the SPEC says.
    assert definition.graph.roots == ("collect_stats", "collect_weather")
    assert set(definition.graph.predecessors["alert_admin"]) == set(KEYS) - {"alert_admin"}
    assert definition.graph.predecessors["check"] == ("collect_stats", "collect_weather")
    assert definition.graph.successors["check"] == ("run_report", "alert_admin")
    stats = definition.step("collect_stats")
    assert stats.retry == RetryPolicy(
        attempts=3, backoff=timedelta(seconds=2), max_backoff=timedelta(minutes=1)
    )
    assert stats.timeout == timedelta(minutes=10)
    assert stats.trigger_rule is TriggerRule.ALL_SUCCESS
    assert definition.step("collect_weather").retry == RetryPolicy()
    assert definition.step("collect_weather").timeout is None
    assert definition.step("run_report").args == {
        "procedure": "SP_INS_WEEK_MAIN",
        "args": ["{{ params.period }}", None],
    }
    assert definition.step("alert_admin").trigger_rule is TriggerRule.ONE_FAILED
    assert definition.step("alert_admin").next_steps == ()


def test_an_all_done_step_named_by_no_step_waits_for_every_other_step() -> None:
    definition = parse_definition(
        minimal(
            s("a", "b"),
            s("b"),
            s("alert", trigger_rule="one_failed"),
            s("log", "tidy", trigger_rule="all_done"),  # a final handler, with a successor
            s("tidy"),
            s("audit", trigger_rule="all_done"),  # a second final handler
        ),
        "demo.yaml",
    )
    graph = definition.graph
    # Every step but its own descendants and the other final handlers (and theirs).
    assert set(graph.predecessors["log"]) == {"a", "b", "alert"}
    assert set(graph.predecessors["audit"]) == {"a", "b", "alert"}
    # The failure watcher watches neither final handler nor what follows one.
    assert set(graph.predecessors["alert"]) == {"a", "b"}
    assert graph.predecessors["tidy"] == ("log",)
    assert find_cycle(graph.successors) is None
    assert topological_order(graph)[-3:] in (["log", "tidy", "audit"], ["log", "audit", "tidy"])


def test_a_lone_all_done_step_is_a_root() -> None:
    definition = parse_definition(minimal(s("only", trigger_rule="all_done")), "demo.yaml")
    assert definition.graph.roots == ("only",)


def test_spec_example_parses_with_importable_runners() -> None:
    definition = parse_definition(weekly_report(), "weekly_report.yaml")
    assert_is_weekly_report(definition)
    assert definition.step("check").runner == "runners_fixture:check"


def test_spec_example_verbatim_parses_without_runner_check() -> None:
    definition = parse_definition(yaml.safe_load(SPEC_WEEKLY_REPORT), check_runners=False)
    assert_is_weekly_report(definition)
    assert definition.step("run_report").runner == "stepline.sql:call_procedure"


def test_spec_example_verbatim_reports_each_unimportable_runner() -> None:
    problems = problems_of(yaml.safe_load(SPEC_WEEKLY_REPORT), "weekly_report.yaml")
    farm = {p.step: p.message for p in problems if "farm_report.steps" in p.message}
    assert set(farm) == {"collect_stats", "collect_weather", "check"}
    assert all("cannot import module 'farm_report.steps'" in m for m in farm.values())
    assert all(p.source == "weekly_report.yaml" for p in problems)


@pytest.mark.parametrize("spelling", ["next_steps", "nextSteps"])
def test_next_steps_accepts_camel_case(spelling: str) -> None:
    doc = weekly_report()
    for raw in doc["steps"]:
        if "next_steps" in raw:
            raw[spelling] = raw.pop("next_steps")
    definition = parse_definition(doc)
    assert definition == parse_definition(weekly_report())
    assert definition.step("collect_stats").next_steps == ("check",)


@pytest.mark.parametrize(
    ("raw", "check_attribute", "expected"),
    [
        pytest.param({"triggerRule": "all_done"}, "trigger_rule", TriggerRule.ALL_DONE,
                     id="triggerRule-camel-case"),
        pytest.param({"next_steps": "b"}, "next_steps", ("b",), id="single-next-step-string"),
        pytest.param({"retry": 4}, "retry", RetryPolicy(attempts=4), id="retry-shorthand"),
        pytest.param({"retry": {"jitter": False}}, "retry", RetryPolicy(jitter=False),
                     id="retry-jitter-off"),
        pytest.param({"timeout": 90}, "timeout", timedelta(seconds=90), id="timeout-seconds"),
        pytest.param({"timeout": "500ms"}, "timeout", timedelta(milliseconds=500),
                     id="timeout-ms"),
        pytest.param({"condition": "params.period == 'WEEK'"}, "condition",
                     "params.period == 'WEEK'", id="condition"),
        pytest.param({"map": "items"}, "map", MapSpec(over="items"), id="map-shorthand-param"),
        pytest.param({"map": {"over": "items", "concurrency": 4}}, "map",
                     MapSpec("items", 4), id="map-over-param"),
        pytest.param({"runner": "runners_fixture:Steps.nested"}, "runner",
                     "runners_fixture:Steps.nested", id="dotted-attribute-runner"),
    ],
)  # fmt: skip
def test_step_options(raw: dict[str, Any], check_attribute: str, expected: object) -> None:
    doc = minimal(s("a", **raw), s("b"), params={"items": [1, 2]})
    definition = parse_definition(doc)
    assert getattr(definition.step("a"), check_attribute) == expected


def test_map_over_a_direct_upstream_step_is_accepted() -> None:
    definition = parse_definition(
        minimal(s("list_farms", "per_farm"), s("per_farm", map="list_farms"))
    )
    assert definition.step("per_farm").map == MapSpec(over="list_farms")


def test_batch_defaults() -> None:
    definition = parse_definition(minimal(s("only")))
    assert (definition.cron, definition.timezone, definition.max_active_instances) == (
        None, None, 1
    )  # fmt: skip
    assert definition.params == {}
    assert definition.step("only") == StepDefinition(key="only", runner="runners_fixture:check")


def test_scheduler_options_are_carried_in_extra() -> None:
    definition = parse_definition(minimal(s("a"), misfire="skip", on_busy="queue"))
    assert definition.extra == {"misfire": "skip", "on_busy": "queue"}


# --- one problem at a time -------------------------------------------------------------------

CYCLE = minimal(s("a", "b"), s("b", "c"), s("c", "a"))

# (document, words the message must contain, the step the problem is attributed to)
# fmt: off
PROBLEMS = [
    pytest.param(minimal(s("a"), s("a")), ["duplicate step key 'a'"], "a", id="duplicate-key"),
    pytest.param(minimal(s("a", "nope")), ["next_steps", "unknown step 'nope'"], "a",
                 id="unknown-next-step"),
    pytest.param(CYCLE, ["cycle", "a -> b -> c -> a"], None, id="cycle"),
    pytest.param(minimal(s("x"), s("a", "b"), s("b", "a")), ["cycle: a -> b -> a"], None,
                 id="cycle-after-a-root"),
    pytest.param(minimal(s("a", "a")), ["cannot follow itself"], "a", id="self-loop"),
    pytest.param(minimal(s("a", runner="no_such_module_xyz:run")),
                 ["'no_such_module_xyz:run'", "cannot import module 'no_such_module_xyz'"], "a",
                 id="runner-module-missing"),
    pytest.param(minimal(s("a", runner="runners_fixture:missing")),
                 ["'runners_fixture:missing'", "no attribute 'missing'"], "a",
                 id="runner-attribute-missing"),
    pytest.param(minimal(s("a", runner="runners_fixture")),
                 ["'runners_fixture'", "'module:function'"], "a", id="runner-without-colon"),
    pytest.param(minimal(s("a", runner="runners_fixture:")), ["'module:function'"], "a",
                 id="runner-without-function"),
    pytest.param(minimal(s("a", runner=":check")), ["'module:function'"], "a",
                 id="runner-without-module"),
    pytest.param(minimal(s("a", runner="runners_fixture:NOT_CALLABLE")), ["not callable"], "a",
                 id="runner-not-callable"),
    pytest.param(minimal({"key": "a"}), ["missing 'runner'"], "a", id="runner-missing"),
    pytest.param(minimal(s("a", runner=42)), ["runner 42 must be a string 'module:function'"],
                 "a", id="runner-not-a-string"),
    pytest.param(minimal(s("a", timeout="10 minutes")), ["timeout", "'10 minutes'"], "a",
                 id="bad-timeout"),
    pytest.param(minimal(s("a", timeout=-3)), ["timeout", "negative"], "a",
                 id="negative-timeout"),
    pytest.param(minimal(s("a", retry={"backoff": "fast"})), ["retry.backoff", "'fast'"], "a",
                 id="bad-backoff"),
    pytest.param(minimal(s("a", retry={"max_backoff": "1 hour"})),
                 ["retry.max_backoff", "'1 hour'"], "a", id="bad-max-backoff"),
    pytest.param(minimal(s("a", retry={"attempts": 0})), ["retry.attempts 0"], "a",
                 id="zero-attempts"),
    pytest.param(minimal(s("a", retry={"attempts": -2})), ["retry.attempts -2"], "a",
                 id="negative-attempts"),
    pytest.param(minimal(s("a", retry={"attempts": "3"})), ["retry.attempts '3'"], "a",
                 id="attempts-as-string"),
    pytest.param(minimal(s("a", retry={"attempts": 2.5})), ["retry.attempts 2.5"], "a",
                 id="fractional-attempts"),
    pytest.param(minimal(s("a", retry={"attempts": True})), ["retry.attempts True"], "a",
                 id="boolean-attempts"),
    pytest.param(minimal(s("a", retry="often")), ["retry must be a mapping"], "a",
                 id="retry-not-mapping"),
    pytest.param(minimal(s("a", trigger_rule="one_sucess")),
                 ["unknown trigger_rule 'one_sucess'", "one_success"], "a",
                 id="unknown-trigger-rule"),
    pytest.param(minimal(s("a", nextstep=["b"]), s("b")), ["unknown field 'nextstep'"], "a",
                 id="step-field-typo"),
    pytest.param(minimal(s("a"), schedule="0 2 * * *"),
                 ["unknown field 'schedule'", "misfire_grace, name, on_busy"], None,
                 id="batch-field-typo"),
    pytest.param(minimal(s("a", map="elsewhere")),
                 ["map.over 'elsewhere'", "upstream", "params"], "a", id="map-over-unknown"),
    pytest.param(minimal(s("a"), s("b", "c"), s("c", map="a")), ["map.over 'a'"], "c",
                 id="map-over-unrelated-step"),
    pytest.param(minimal(s("a", map={"concurrency": 2})), ["map must be"], "a",
                 id="map-without-over"),
    pytest.param(minimal(s("a", map={"over": "xs", "concurrency": 0}), params={"xs": []}),
                 ["map.concurrency 0"], "a", id="map-zero-concurrency"),
    pytest.param(minimal(s("a", with_=1)), ["unknown field 'with_'"], "a", id="with-typo"),
    pytest.param(minimal(s("a", **{"with": [1, 2]})), ["'with' must be a mapping"], "a",
                 id="with-not-mapping"),
    pytest.param(minimal(s("a", condition=["x"])), ["condition"], "a", id="condition-list"),
    pytest.param({"name": "Weekly Report", "steps": [s("a")]}, ["name 'Weekly Report'"], None,
                 id="name-with-capitals-and-space"),
    pytest.param({"steps": [s("a")]}, ["name None"], None, id="name-missing"),
    pytest.param({"name": "x" * 201, "steps": [s("a")]}, ["name 'xxx"], None, id="name-too-long"),
    pytest.param(minimal(s("a"), cron="0 2 * *"), ["invalid cron \"0 2 * *\"", "4 fields"],
                 None, id="cron-too-few-fields"),
    pytest.param(minimal(s("a"), cron="61 * * * *"), ["invalid cron \"61 * * * *\""], None,
                 id="cron-bad-minute"),
    pytest.param(minimal(s("a"), timezone="Mars/Olympus"), ["unknown timezone 'Mars/Olympus'"],
                 None, id="unknown-timezone"),
    pytest.param(minimal(s("a"), timezone="asia/seoul"), ["unknown timezone 'asia/seoul'"],
                 None, id="timezone-wrong-case"),
    pytest.param(
        minimal(s("a"), timezone="Asia"), ["unknown timezone 'Asia'"], None,
        id="timezone-is-a-region-folder",
    ),
    pytest.param(
        minimal(s("a", timeout=float("inf"))), ["timeout"], "a", id="infinite-timeout",
    ),
    pytest.param(
        minimal(s("a", retry={"max_backoff": 1e20})), ["retry.max_backoff"], "a",
        id="huge-max-backoff",
    ),
    pytest.param(minimal(s("a"), max_active_instances=0), ["max_active_instances 0"], None,
                 id="max-active-zero"),
    pytest.param(minimal(s("a"), params=[1]), ["params must be a mapping"], None,
                 id="params-not-mapping"),
    pytest.param(minimal(s("a"), alerts={"type": "webhook"}), ["alerts must be a list"], None,
                 id="alerts-not-list"),
    pytest.param(minimal(), ["steps must be a non-empty list"], None, id="no-steps"),
    pytest.param({"name": "demo"}, ["steps must be a non-empty list"], None, id="steps-missing"),
    pytest.param(minimal("not a step"), ["step #1 must be a mapping"], None, id="step-is-string"),
    pytest.param(minimal(s("bad key!")), ["step #1", "invalid key 'bad key!'"], None,
                 id="bad-step-key"),
    pytest.param(["name", "demo"], ["must be a mapping, got list"], None, id="document-is-list"),
    pytest.param(None, ["the definition is empty"], None, id="document-is-empty"),
]
# fmt: on


@pytest.mark.parametrize(("doc", "words", "step_key"), PROBLEMS)
def test_each_problem_is_reported_and_located(
    doc: object, words: list[str], step_key: str | None
) -> None:
    problems = problems_of(doc, "demo.yaml")
    assert len(problems) == 1, problems
    (problem,) = problems
    for word in words:
        assert word in problem.message
    assert problem.source == "demo.yaml"
    assert problem.step == step_key


def test_with_field_is_the_step_arguments() -> None:
    definition = parse_definition(minimal(s("a", **{"with": {"table": "farm"}})))
    assert definition.step("a").args == {"table": "farm"}


def test_duplicate_key_keeps_the_first_step() -> None:
    problems = problems_of(minimal(s("a", "b"), s("a", runner="nowhere:x"), s("b")))
    assert [p.message for p in problems] == [
        "runner 'nowhere:x': cannot import module 'nowhere' (No module named 'nowhere'); "
        "runner modules are imported with the current directory on sys.path",
        "duplicate step key 'a'",
    ]


# --- every problem at once -------------------------------------------------------------------


def test_all_problems_are_reported_together() -> None:
    doc = minimal(
        s("a", "ghost"),
        s("b", timeout="soon"),
        s("c", trigger_rule="sometimes"),
    )
    with pytest.raises(DefinitionError) as info:
        parse_definition(doc, "pipelines/demo.yaml")
    problems = sorted(info.value.problems, key=lambda p: p.step or "")
    assert [(p.source, p.step) for p in problems] == [
        ("pipelines/demo.yaml", "a"),
        ("pipelines/demo.yaml", "b"),
        ("pipelines/demo.yaml", "c"),
    ]
    assert "'ghost'" in problems[0].message
    assert problems[1].message.startswith("timeout: ")
    assert "'sometimes'" in problems[2].message
    lines = sorted(str(info.value).splitlines())
    assert len(lines) == 3
    assert lines == sorted(str(p) for p in problems)
    assert lines[1].startswith("pipelines/demo.yaml: step 'b': timeout: ")


def test_batch_and_step_problems_are_reported_together() -> None:
    doc = {
        "name": "Bad Name",
        "cron": "every monday",
        "timezone": "Nowhere/City",
        "steps": [
            s("a", "b", retry={"attempts": 0, "backoff": "x"}),
            s("b", "a", runner="no_such_module_xyz:f"),
            s("b"),
        ],
    }
    problems = problems_of(doc)
    messages = "\n".join(p.message for p in problems)
    for word in ["name 'Bad Name'", "unknown timezone", "invalid cron", "retry.attempts 0",
                 "retry.backoff", "no_such_module_xyz", "duplicate step key 'b'",
                 "cycle: a -> b -> a"]:  # fmt: skip
        assert word in messages
    assert len(problems) == 8


def test_cron_is_checked_in_the_given_timezone_after_a_bad_timezone() -> None:
    problems = problems_of(minimal(s("a"), cron="0 2 * * *", timezone="Nowhere/City"))
    assert [p.message for p in problems] == [
        "unknown timezone 'Nowhere/City': use an IANA name such as Asia/Seoul"
    ]


@pytest.mark.parametrize(
    "module_text",
    [
        pytest.param("def broken(:\n", id="syntax-error"),
        pytest.param("raise RuntimeError('needs DATABASE_URL')\n", id="raises-at-import"),
    ],
)
def test_runner_module_that_fails_at_import_is_a_problem(
    module_text: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    module = f"broken_runner_{request.node.callspec.id.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(module_text, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    problems = problems_of(minimal(s("a", runner=f"{module}:run")))
    assert problems[0].step == "a"
    assert module in problems[0].message


# --- files -----------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("filename", "dump"),
    [
        pytest.param("weekly.yaml", yaml.safe_dump, id="yaml"),
        pytest.param("weekly.yml", yaml.safe_dump, id="yml"),
        pytest.param("weekly.json", json.dumps, id="json"),
    ],
)
def test_read_and_load_a_file(filename: str, dump: Callable[[Any], str], tmp_path: Path) -> None:
    path = write(tmp_path / filename, dump(weekly_report()))
    assert read_document(path) == weekly_report()
    assert_is_weekly_report(load_definition(path))


def test_spec_yaml_text_is_read_with_its_comments(tmp_path: Path) -> None:
    path = write(tmp_path / "weekly_report.yaml", SPEC_WEEKLY_REPORT)
    assert_is_weekly_report(load_definition(path, check_runners=False))


@pytest.mark.parametrize(
    ("filename", "text", "words"),
    [
        pytest.param("bad.yaml", "name: [unclosed\nsteps: {", ["not valid YAML", "line"],
                     id="broken-yaml"),
        pytest.param("bad.yml", "a: b\n  c: d\n", ["not valid YML", 'in "bad.yml", line 2'],
                     id="broken-yml"),
        pytest.param("bad.json", '{"name": "x",}', ["not valid JSON", "line 1"],
                     id="broken-json"),
    ],
)  # fmt: skip
def test_broken_file_names_the_file(
    filename: str, text: str, words: list[str], tmp_path: Path
) -> None:
    path = write(tmp_path / filename, text)
    with pytest.raises(DefinitionError) as info:
        read_document(path)
    (problem,) = info.value.problems
    assert problem.source == str(path)
    assert str(path) in str(info.value)
    for word in words:
        assert word in problem.message
    assert "<unicode string>" not in problem.message


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone.yaml"
    with pytest.raises(DefinitionError, match="cannot read file") as info:
        read_document(missing)
    assert info.value.problems[0].source == str(missing)


def test_problems_in_a_file_carry_the_file_name(tmp_path: Path) -> None:
    path = write(tmp_path / "demo.yaml", yaml.safe_dump(minimal(s("a", "ghost"))))
    with pytest.raises(DefinitionError) as info:
        load_definition(path)
    assert [(p.source, p.step) for p in info.value.problems] == [(str(path), "a")]


def test_load_definitions_from_a_directory(tmp_path: Path) -> None:
    write(tmp_path / "b_weekly.yaml", yaml.safe_dump(weekly_report()))
    write(tmp_path / "a_daily.json", json.dumps(minimal(s("only"), name="daily")))
    write(tmp_path / "c_broken.yml", "name: [")
    write(tmp_path / "d_invalid.yaml", yaml.safe_dump(minimal(s("a", "ghost"))))
    write(tmp_path / "README.md", "# not a definition")
    write(tmp_path / "notes.txt", "name: ignored")
    (tmp_path / "nested").mkdir()
    write(tmp_path / "nested" / "deeper.yaml", yaml.safe_dump(minimal(s("x"))))
    for skipped in (".venv", "__pycache__", "nested/.git"):
        (tmp_path / skipped).mkdir()
        write(tmp_path / skipped / "ignored.yaml", "name: [")

    loaded = dict(load_definitions(tmp_path))
    assert list(loaded) == [
        tmp_path / "a_daily.json",
        tmp_path / "b_weekly.yaml",
        tmp_path / "c_broken.yml",
        tmp_path / "d_invalid.yaml",
        tmp_path / "nested" / "deeper.yaml",
    ]
    daily, weekly = loaded[tmp_path / "a_daily.json"], loaded[tmp_path / "b_weekly.yaml"]
    assert isinstance(daily, BatchDefinition) and daily.name == "daily"
    assert isinstance(weekly, BatchDefinition)
    assert_is_weekly_report(weekly)
    broken, invalid = loaded[tmp_path / "c_broken.yml"], loaded[tmp_path / "d_invalid.yaml"]
    assert isinstance(broken, DefinitionError)
    assert broken.problems[0].source == str(tmp_path / "c_broken.yml")
    assert isinstance(invalid, DefinitionError)
    assert invalid.problems[0].source == str(tmp_path / "d_invalid.yaml")
    assert "'ghost'" in invalid.problems[0].message


def test_load_definitions_of_a_single_file(tmp_path: Path) -> None:
    path = write(tmp_path / "weekly.yaml", yaml.safe_dump(weekly_report()))
    ((file, definition),) = load_definitions(path)
    assert file == path
    assert isinstance(definition, BatchDefinition)
    assert definition.name == "weekly_report"


def test_load_definitions_of_an_empty_directory_yields_nothing(tmp_path: Path) -> None:
    assert list(load_definitions(tmp_path)) == []


def test_non_existent_path_is_a_definition_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DefinitionError, match="no such file or directory") as info:
        list(load_definitions(missing))
    assert info.value.problems[0].source == str(missing)
    with pytest.raises(DefinitionError):
        definition_files(missing)


def test_load_definitions_passes_check_runners(tmp_path: Path) -> None:
    write(tmp_path / "weekly.yaml", SPEC_WEEKLY_REPORT)
    ((_, checked),) = load_definitions(tmp_path)
    ((_, unchecked),) = load_definitions(tmp_path, check_runners=False)
    assert isinstance(checked, DefinitionError)
    assert isinstance(unchecked, BatchDefinition)


# --- round trip ------------------------------------------------------------------------------

ROUND_TRIP = [
    pytest.param(weekly_report(), id="weekly-report"),
    pytest.param(minimal(s("only")), id="minimal"),
    pytest.param(
        minimal(
            s("list", "each", retry={"attempts": 2, "jitter": False}, timeout="1h30m"),
            s(
                "each",
                "done",
                map={"over": "list", "concurrency": 3},
                condition="params.enabled",
                **{"with": {"n": 1}},
            ),
            s("done", trigger_rule="all_done", timeout="500ms"),
            s("notify", triggerRule="none_failed", nextSteps=[]),
            params={"enabled": True},
            alerts=[{"type": "webhook", "url": "https://example.invalid/hook"}],
            description="every option",
            cron="*/5 * * * *",
            timezone="UTC",
            max_active_instances=3,
            misfire="once",
        ),
        id="every-option",
    ),
    pytest.param(
        minimal(s("a"), description=""),
        id="empty-description",
    ),
]


@pytest.mark.parametrize("doc", ROUND_TRIP)
def test_round_trip_through_document(doc: dict[str, Any]) -> None:
    definition = parse_definition(copy.deepcopy(doc))
    assert parse_definition(definition.to_document()) == definition


@pytest.mark.parametrize("doc", ROUND_TRIP)
def test_round_trip_through_stored_json(doc: dict[str, Any]) -> None:
    definition = parse_definition(copy.deepcopy(doc))
    stored = json.dumps(definition.to_document())
    again = parse_definition(json.loads(stored))
    assert again == definition
    assert again.to_document() == definition.to_document()


def test_to_document_uses_canonical_names() -> None:
    doc = parse_definition(
        minimal(s("a", triggerRule="one_failed", nextSteps=["b"]), s("b"))
    ).to_document()
    assert doc["steps"][0] == {"key": "a", "runner": "runners_fixture:check",
                               "next_steps": ["b"], "trigger_rule": "one_failed"}  # fmt: skip
    assert doc["steps"][1] == {"key": "b", "runner": "runners_fixture:check"}
    assert doc["max_active_instances"] == 1


# --- Python builders -------------------------------------------------------------------------


def test_step_builder_turns_a_callable_into_its_reference() -> None:
    assert step("a", collect_stats, ["b"]) == {
        "key": "a",
        "runner": "runners_fixture:collect_stats",
        "next_steps": ["b"],
    }
    assert step("a", Steps.nested)["runner"] == "runners_fixture:Steps.nested"
    assert step("a", "pkg.mod:fn", retry=2)["retry"] == 2


def test_batch_builder_validates_like_a_file() -> None:
    built = batch(
        "weekly_report",
        [
            step("collect_stats", collect_stats, ["check"], retry={"attempts": 3}),
            step("check", check, timeout="10m"),
        ],
        cron="0 0 2 * * 1",
        timezone="Asia/Seoul",
        params={"period": "WEEK"},
    )
    assert isinstance(built, BatchDefinition)
    assert built.graph.predecessors["check"] == ("collect_stats",)
    assert built.step("collect_stats").retry.attempts == 3
    assert built.step("check").timeout == timedelta(minutes=10)
    assert built.step("check").runner == "runners_fixture:check"
    assert parse_definition(built.to_document()) == built


def test_batch_builder_reports_problems_with_python_as_source() -> None:
    with pytest.raises(DefinitionError) as info:
        batch("Bad", [step("a", check, ["ghost"])])
    assert {p.source for p in info.value.problems} == {"<python>"}
    assert [p.step for p in info.value.problems] == [None, "a"]


def nested_runner() -> Callable[[Any], None]:
    def inner(context: Any) -> None:
        return None

    return inner


@pytest.mark.parametrize(
    "runner",
    [
        pytest.param(lambda context: None, id="lambda"),
        pytest.param(nested_runner(), id="nested-function"),
    ],
)
def test_step_builder_rejects_callables_not_importable_by_name(
    runner: Callable[..., Any],
) -> None:
    with pytest.raises(ValueError, match="not importable by name"):
        step("a", runner)


def test_definition_lookup_by_key() -> None:
    definition = parse_definition(weekly_report())
    assert definition.step("check").next_steps == ("run_report",)
    with pytest.raises(KeyError):
        definition.step("ghost")


# --- trigger rules ---------------------------------------------------------------------------

AIRFLOW_RULES = [
    "all_success", "all_failed", "all_done", "all_skipped", "one_success", "one_failed",
    "one_done", "none_failed", "none_failed_min_one_success", "none_skipped", "always",
]  # fmt: skip


@pytest.mark.parametrize("rule", AIRFLOW_RULES)
def test_every_airflow_rule_is_accepted_and_round_trips(rule: str) -> None:
    definition = parse_definition(minimal(s("a", "b"), s("b", trigger_rule=rule)))
    assert definition.step("b").trigger_rule.value == rule
    assert parse_definition(definition.to_document()) == definition


def test_an_unknown_trigger_rule_is_refused_listing_every_valid_one() -> None:
    (problem,) = problems_of(minimal(s("a", trigger_rule="one_sucess")))
    assert problem.step == "a"
    assert problem.message.startswith("unknown trigger_rule 'one_sucess'")
    listed = problem.message.split("known: ")[1].rstrip(")").split(", ")
    assert sorted(listed) == sorted(AIRFLOW_RULES)


@pytest.mark.parametrize(
    ("old", "new"), [("dummy", "always"), ("none_failed_or_skipped", "none_failed_min_one_success")]
)
def test_a_retired_airflow_rule_name_is_refused_naming_the_current_one(old: str, new: str) -> None:
    (problem,) = problems_of(minimal(s("a", trigger_rule=old)))
    assert f"unknown trigger_rule {old!r} (Airflow's old name for {new!r}; known: " in (
        problem.message
    )


def test_an_always_step_cannot_map_over_an_upstream_result() -> None:
    (problem,) = problems_of(minimal(s("a", "b"), s("b", map="a", trigger_rule="always")))
    assert problem.step == "b"
    assert "an 'always' step starts without waiting" in problem.message
    assert "all_done" in problem.message
    ok = minimal(s("a", "b"), s("b", map="a", trigger_rule="all_done"))
    assert parse_definition(ok).step("b").map == MapSpec(over="a")
    over_params = minimal(s("a", "b"), s("b", map="xs", trigger_rule="always"), params={"xs": []})
    assert parse_definition(over_params).step("b").map == MapSpec(over="xs")


# --- queues (celery dispatcher) ----------------------------------------------------------------


def test_a_step_queue_overrides_the_batch_queue() -> None:
    definition = parse_definition(
        minimal(s("a", "b", queue="oracle-dmz"), s("b"), queue="default.q"), "demo.yaml"
    )
    assert definition.queue_of("a") == "oracle-dmz"
    assert definition.queue_of("b") == "default.q"
    assert parse_definition(minimal(s("a"))).queue_of("a") is None
    again = parse_definition(definition.to_document())
    assert again == definition and again.to_document()["queue"] == "default.q"


@pytest.mark.parametrize("bad", ["has space", "", 7, "x" * 101, "semi;colon"])
def test_an_invalid_queue_is_refused_with_its_name(bad: object) -> None:
    problems = problems_of(minimal(s("a", queue=bad), queue=bad))
    assert [p.step for p in problems] == [None, "a"]
    assert all(f"queue {bad!r} must be 1-100 characters" in p.message for p in problems)
