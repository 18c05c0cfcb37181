"""A runner in ``__main__`` is refused before it is stored: no other process can import it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stepline.core.loader import parse_definition
from stepline.errors import DefinitionError
from stepline.service import Stepline

SCRIPT = """
    import stepline

    def collect(ctx):
        return 1

    try:
        stepline.batch("demo", [stepline.step("collect", collect)])
    except ValueError as exc:
        print("refused:", exc)
    else:
        print("accepted")
"""


def test_a_script_naming_its_own_function_is_told_how_to_name_a_module(tmp_path: Path) -> None:
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent(SCRIPT), encoding="utf-8")

    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )

    assert done.stdout.startswith("refused: runner '__main__:collect'"), done.stdout
    assert "runner: steps:collect" in done.stdout


def test_a_definition_naming_main_is_refused_by_validation() -> None:
    doc = {"name": "demo", "steps": [{"key": "a", "runner": "__main__:collect"}]}

    with pytest.raises(DefinitionError) as raised:
        parse_definition(doc, "demo.yaml")

    (problem,) = raised.value.problems
    assert problem.step == "a"
    assert "defined in the script being run (__main__)" in problem.message
    assert "move it into a module of its own" in problem.message


def test_apply_refuses_it_even_when_runners_were_not_checked(tmp_path: Path) -> None:
    doc = {"name": "demo", "steps": [{"key": "a", "runner": "__main__:collect"}]}
    definition = parse_definition(doc, "demo.yaml", check_runners=False)

    with Stepline(db=f"sqlite:///{tmp_path / 'stepline.db'}") as service:
        with pytest.raises(DefinitionError) as raised:
            service.apply(definition)
        assert service.store.definitions() == []

    assert "runner: steps:collect" in str(raised.value.problems[0])
