"""``stepline.testing.run_batch``: a batch run in-process on a throw-away database."""

from __future__ import annotations

from pathlib import Path

from stepline import InstanceStatus, StepStatus, batch, step
from stepline.testing import run_batch

W = "fixture_runners:work"


def test_returns_each_steps_result_and_the_status() -> None:
    definition = batch(
        "helper_ok",
        [
            step("a", W, ["b"], with_={"value": [1, 2, 3]}),
            step("b", "fixture_runners:item_work", map="a"),
        ],
    )
    run = run_batch(definition)
    assert run.status is InstanceStatus.SUCCEEDED
    assert run.results["a"] == [1, 2, 3]
    assert [r.map_index for r in run.items["b"]] == [0, 1, 2]
    assert run.statuses == {"a": StepStatus.SUCCEEDED, "b": StepStatus.SUCCEEDED}


def test_a_failure_is_returned_with_its_error_and_attempts() -> None:
    definition = batch(
        "helper_fail",
        [step("a", W, with_={"fail_times": 5}, retry={"attempts": 2, "backoff": 0.01})],
    )
    run = run_batch(definition)
    assert run.status is InstanceStatus.FAILED
    assert run.statuses["a"] is StepStatus.FAILED
    assert "planned failure 2" in run.errors["a"]
    assert [a.attempt for a in run.attempts] == [1, 2]
    assert "a" not in run.results


def test_params_reach_the_runners() -> None:
    definition = batch("helper_params", [step("a", W, with_={"value": "{{ params.who }}"})])
    assert run_batch(definition, params={"who": "farm"}).results == {"a": "farm"}


def test_each_run_has_its_own_database_unless_one_is_given(tmp_path: Path) -> None:
    definition = batch("helper_db", [step("a", W, with_={"value": 1})])
    assert run_batch(definition).instance.id == 1
    assert run_batch(definition).instance.id == 1  # a fresh database each time
    url = f"sqlite:///{tmp_path / 'kept.db'}"
    run_batch(definition, db=url)
    assert run_batch(definition, db=url).instance.id == 2


def test_runs_on_the_given_database(db_url: str) -> None:
    definition = batch(
        "helper_backends",
        [step("a", W, ["b"], with_={"value": {"n": 1}}), step("b", W, with_={"value": 2})],
    )
    first = run_batch(definition, db=db_url)
    second = run_batch(definition, db=db_url)
    assert first.status is second.status is InstanceStatus.SUCCEEDED
    assert second.results == {"a": {"n": 1}, "b": 2}
    assert second.instance.id == first.instance.id + 1
