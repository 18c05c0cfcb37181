"""Every ``stepline`` command line in the operations and install docs names a real command
and real options, so the docs cannot drift from the CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from stepline.cli.app import app

DOCS = Path(__file__).resolve().parents[2] / "docs"
FILES = ["operations.md", "install.md"]


def command_lines() -> list[tuple[str, str]]:
    found = []
    for name in FILES:
        text = (DOCS / name).read_text(encoding="utf-8")
        for block in re.findall(r"```(?:sh|console)\n(.*?)```", text, re.DOTALL):
            for line in block.splitlines():
                line = line.removeprefix("$ ").split("#", 1)[0].strip()
                if line.startswith("stepline "):
                    found.append((name, line))
    return found


@pytest.mark.parametrize(("doc", "line"), command_lines())
def test_documented_command_lines_are_real(doc: str, line: str) -> None:
    group: Any = typer.main.get_command(app)
    words = shlex.split(line)[1:]
    command = group
    while hasattr(command, "get_command") and words and not words[0].startswith("-"):
        sub = command.get_command(command.context_class(command), words.pop(0))
        assert sub is not None, f"{doc}: unknown command in {line!r}"
        command = sub
    options = {o for p in command.params for o in getattr(p, "opts", [])}
    options |= {o for p in group.params for o in getattr(p, "opts", [])}
    for word in words:
        if word.startswith("-"):
            assert word.split("=", 1)[0] in options, f"{doc}: {word} is not an option of {line!r}"


def test_the_docs_have_command_lines() -> None:
    assert len(command_lines()) >= 15
