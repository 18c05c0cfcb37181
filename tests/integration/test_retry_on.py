"""`retry: {on: [...]}`: only the listed errors (database codes, class names) are retried."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_engine import name

import fixture_runners as fr
from stepline import DefinitionError, InstanceStatus, StepStatus, batch
from stepline.service import Stepline


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Stepline]:
    with Stepline(db=f"sqlite:///{tmp_path / 'stepline.db'}") as service:
        yield service


def run_coded(app: Stepline, code: str, on: Any, fail_times: int = 1) -> tuple[Any, int]:
    retry = {"attempts": 3, "backoff": "0s", **({"on": on} if on is not None else {})}
    step = {
        "key": "call",
        "runner": "fixture_runners:coded",
        "with": {"code": code, "fail_times": fail_times},
        "retry": retry,
    }
    stored = app.apply(batch(name(), [step]))
    instance, _ = app.trigger(stored.name, owned=True)
    final = app.run_instance(instance.id)
    return final, fr.calls[(final.batch, "call")]


def test_a_listed_ora_code_is_retried(app: Stepline) -> None:
    final, calls = run_coded(app, "ORA-00060", ["ORA-00060", "ORA-12541"])
    assert final.status is InstanceStatus.SUCCEEDED
    assert calls == 2


def test_an_unlisted_code_fails_at_once_and_keeps_its_code(app: Stepline) -> None:
    final, calls = run_coded(app, "ORA-00942", ["ORA-00060", "ORA-12541"])
    assert final.status is InstanceStatus.FAILED
    assert calls == 1  # 3 attempts allowed, but ORA-00942 is not transient
    (row,) = app.store.step_results(final.id)
    assert row.status is StepStatus.FAILED
    assert row.error is not None and row.error.startswith("DatabaseError: ORA-00942:")


def test_codes_and_class_names_match_case_insensitively(app: Stepline) -> None:
    final, calls = run_coded(app, "ORA-00060", ["ora-00060"])
    assert (final.status, calls) == (InstanceStatus.SUCCEEDED, 2)
    final, calls = run_coded(app, "40P01", ["DatabaseError"])
    assert (final.status, calls) == (InstanceStatus.SUCCEEDED, 2)


def test_without_on_every_error_is_retried(app: Stepline) -> None:
    final, calls = run_coded(app, "ORA-00942", None, fail_times=2)
    assert (final.status, calls) == (InstanceStatus.SUCCEEDED, 3)


@pytest.mark.parametrize(
    ("on", "message"),
    [
        ([], "retry.on must be a list"),
        ({"a": 1}, "retry.on must be a list"),
        (["ORA-00060", "no spaces allowed"], "'no spaces allowed' is not an error code"),
        ([60], "60 is not an error code"),
    ],
)
def test_a_bad_on_list_is_refused_naming_it(on: Any, message: str) -> None:
    step = {"key": "a", "runner": "fixture_runners:work", "retry": {"attempts": 2, "on": on}}
    with pytest.raises(DefinitionError, match=message):
        batch("bad_on", [step])


def test_on_round_trips_through_the_stored_document() -> None:
    step = {"key": "a", "runner": "fixture_runners:work", "retry": {"attempts": 2, "on": "X"}}
    definition = batch("doc_on", [step])
    assert definition.step("a").retry.on == ("X",)
    assert definition.to_document()["steps"][0]["retry"]["on"] == ["X"]
