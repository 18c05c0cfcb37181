"""Defining batches in Python: the builders' keyword spelling and ``package.module:attribute``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from stepline import DefinitionError, TriggerRule, batch, step
from stepline.core.targets import is_python_target, load_python_definitions

W = "fixture_runners:work"


def test_with_and_args_are_yamls_with() -> None:
    assert step("a", W, with_={"x": 1})["with"] == {"x": 1}
    assert step("a", W, args={"x": 1})["with"] == {"x": 1}
    old_spelling: dict[str, Any] = {"with": {"x": 1}}
    assert step("a", W, **old_spelling)["with"] == {"x": 1}  # still works
    with pytest.raises(TypeError, match="with_ or args"):
        step("a", W, with_={"x": 1}, args={"x": 2})


def test_builders_take_every_key_typed_and_validate_like_yaml() -> None:
    definition = batch(
        "typed",
        [
            step("load", W, ["each"], with_={"n": "{{ params.n }}"}, retry=3, timeout="10m"),
            step("each", W, ["done"], map="load", condition="params.n > 0"),
            step("done", W, trigger_rule=TriggerRule.ALL_DONE, timeout=timedelta(seconds=5)),
        ],
        cron="0 2 * * MON",
        timezone="Asia/Seoul",
        params={"n": 2},
        max_active_instances=2,
        on_busy="skip",
        misfire="skip",
        description="all keys",
    )
    assert definition.cron == "0 2 * * MON" and definition.timezone == "Asia/Seoul"
    assert definition.max_active_instances == 2
    assert definition.extra == {"on_busy": "skip", "misfire": "skip"}
    assert definition.step("load").retry.attempts == 3
    assert definition.step("load").timeout == timedelta(minutes=10)
    assert definition.step("each").map is not None
    assert definition.step("done").trigger_rule is TriggerRule.ALL_DONE
    assert definition.step("done").timeout == timedelta(seconds=5)


def test_builder_problems_are_all_reported() -> None:
    with pytest.raises(DefinitionError) as caught:
        batch("bad", [step("a", W, ["missing"], retry=0)], cron="61 * * * *")
    text = str(caught.value)
    assert "missing" in text and "retry.attempts" in text and "61" in text


@pytest.fixture
def module_dir(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("pydefs_")]:
        del sys.modules[name]


def test_target_form_is_told_apart_from_names_and_files(tmp_path: Path) -> None:
    assert is_python_target("pkg.mod:nightly")
    assert is_python_target("mod:defs.nightly")
    assert not is_python_target("farm_readings")  # a batch name: no colon allowed in names
    assert not is_python_target("dir/file.yaml")
    existing = tmp_path / "a:b"
    existing.write_text("name: x")
    assert not is_python_target(str(existing))


def test_loads_one_definition_or_a_list(module_dir: Path) -> None:
    (module_dir / "pydefs_ok.py").write_text(
        "from stepline import batch, step\n"
        f"one = batch('one', [step('a', {W!r})])\n"
        f"both = [one, batch('two', [step('a', {W!r})])]\n"
    )
    assert [d.name for d in load_python_definitions("pydefs_ok:one")] == ["one"]
    assert [d.name for d in load_python_definitions("pydefs_ok:both")] == ["one", "two"]


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        (None, "pydefs_absent:x", "no module named 'pydefs_absent'"),
        ("import pydefs_nothing_here\n", "pydefs_dep:x", "importing module 'pydefs_dep' failed"),
        ("raise RuntimeError('boom')\n", "pydefs_boom:x", "RuntimeError: boom"),
        ("x = 1\n", "pydefs_attr:y", "has no attribute 'y'"),
        ("x = 1\n", "pydefs_int:x", "is a int, not a batch definition"),
        ("x = []\n", "pydefs_empty:x", "not a batch definition"),
        (
            f"from stepline import batch, step\nx = batch('x', [step('a', {W!r}, ['nope'])])\n",
            "pydefs_invalid:x",
            "unknown step 'nope'",
        ),
    ],
)
def test_bad_targets_name_the_problem(
    module_dir: Path, source: str | None, target: str, message: str
) -> None:
    if source is not None:
        (module_dir / f"{target.partition(':')[0]}.py").write_text(source)
    with pytest.raises(DefinitionError) as caught:
        load_python_definitions(target)
    assert message in str(caught.value)
    assert target in str(caught.value)


def test_other_keys_pass_through_as_keywords() -> None:
    definition = batch("queued", [step("a", W, queue="reports")], queue="default-q")
    assert definition.step("a").queue == "reports"
    assert definition.queue == "default-q"
