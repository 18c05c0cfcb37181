"""Every example in ``docs/`` and the README runs here, so the documentation cannot go stale.

The convention (for writers of docs pages): an HTML comment on the line just before a fenced
code block says how the block is tested. Every fenced block must have one.

``<!-- test: definition -->``
    A ``yaml`` or ``json`` batch definition: parsed and validated like ``stepline validate``
    (runners must import).
``<!-- test: file PATH -->``
    The block is written to ``PATH`` in the page's scratch directory, for later blocks to use
    (a definition file that a ``sh`` block then runs, a ``.env`` file, ...). A ``.yaml`` file
    with a ``name:`` key is validated as a definition too.
``<!-- test: python -->`` or ``<!-- test: python module=NAME -->``
    Written to ``NAME.py`` in the scratch directory and imported (so module-level runners are
    importable by ``NAME:function``, as in a user's project); its ``assert`` statements are
    the test. Without ``module=`` the module gets a unique name.
``<!-- test: fragment -->``
    A ``yaml`` excerpt (a few steps, a key or two) that is not a whole definition: it must be
    valid YAML, and a mapping with ``name`` and ``steps`` is validated without importing its
    runners.
``<!-- test: sh -->``
    Each ``stepline`` command (a line, or one part of an ``a && b`` chain) runs as the console
    script in the scratch directory against the page's own SQLite database (``STEPLINE_DB``).
    It must exit 0, or with the code of a trailing ``# exit N`` comment. Other commands in the
    block (``pip install``, ``scripts/test``) are not run here: CI runs them itself.
``<!-- test: help -->``
    For commands that need a running service: each ``stepline ...`` line is checked to be a
    real command by running it with ``--help`` (its options are parsed too), which must exit 0.
``<!-- not tested: REASON -->``
    Only for text that no test can run (a systemd unit, a Dockerfile, sample output, a
    ``pip install`` line): the reason must be given, and such a block may not be ``yaml`` or
    ``python``, nor a shell block with a ``stepline`` command (use ``test: help`` for those).

Blocks of one page run in order in one scratch directory, which holds a link to the
repository's ``examples/`` folder. Each page is one test.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from itertools import count, takewhile
from pathlib import Path

import pytest
import yaml

from stepline.core.loader import parse_definition, read_document
from stepline.errors import DefinitionError
from stepline.settings import FIELDS

REPO = Path(__file__).resolve().parents[2]
PAGES = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
STEPLINE = Path(sys.executable).parent / "stepline"
_SHELL = re.compile(r"^(\|\|?|;|&|\d*[<>])")
"""A word that ends the command in a shell line: a pipe, a separator or a redirection."""
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_MARKER = re.compile(r"<!--\s*(test|not tested):\s*(.*?)\s*-->\s*$")
_EXIT = re.compile(r"#\s*exit\s+(\d+)\s*$")
_RUNNABLE = {"yaml", "yml", "python"}
_SHELLS = {"sh", "bash", "console"}
_unique = count(1)


@dataclass(frozen=True)
class Block:
    where: str  # page:line, for messages
    language: str
    text: str
    kind: str  # "test" or "not tested"
    how: str


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, each with its marker; fails on a block without one."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        where = f"{page.name}:{text.count(chr(10), 0, match.start()) + 1}"
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _MARKER.search(before)
        assert marker, f"{where}: fenced block without a <!-- test: ... --> marker"
        found.append(Block(where, match.group(1), match.group(2), *marker.groups()))
    return found


def _run_definition(block: Block, scratch: Path) -> None:
    doc = yaml.safe_load(block.text)
    parse_definition(doc, block.where)


def _run_fragment(block: Block, scratch: Path) -> None:
    doc = yaml.safe_load(block.text)
    if isinstance(doc, dict) and "name" in doc and "steps" in doc:
        parse_definition(doc, block.where, check_runners=False)


def _run_file(block: Block, scratch: Path) -> None:
    target = scratch / block.how.removeprefix("file").strip()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(block.text, encoding="utf-8")
    if target.suffix in (".yaml", ".yml"):
        doc = read_document(target)
        if isinstance(doc, dict) and "name" in doc:
            parse_definition(doc, block.where)


def _run_python(block: Block, scratch: Path) -> None:
    options = dict(part.split("=", 1) for part in block.how.split()[1:])
    name = options.get("module", f"doc_example_{next(_unique)}")
    (scratch / f"{name}.py").write_text(block.text, encoding="utf-8")
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    importlib.import_module(name)


def _env(scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
    env.pop("PYTHONPATH", None)
    env["NO_COLOR"] = "1"
    env["STEPLINE_DB"] = f"sqlite:///{scratch / 'stepline.db'}"
    return env


def _commands(block: Block) -> list[tuple[list[str], int]]:
    commands = []
    for raw in block.text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        expected = _EXIT.search(line)
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if words and words[0] == "stepline":
                commands.append((words, int(expected.group(1)) if expected else 0))
    assert commands, f"{block.where}: no command in a tested sh block"
    return commands


def _run_sh(block: Block, scratch: Path, *, help_only: bool = False) -> None:
    for words, expected in _commands(block):
        if help_only:
            # The whole command line, up to a pipe or a redirection, with --help: every option
            # is parsed (an unknown one fails), then help exits before arguments are checked.
            words = list(takewhile(lambda w: not _SHELL.match(w), words))
            words, expected = [*words, "--help"], 0
        proc = subprocess.run(
            [str(STEPLINE), *words[1:]],
            cwd=scratch,
            env=_env(scratch),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == expected, (
            f"{block.where}: `{shlex.join(words)}` exited {proc.returncode}, "
            f"expected {expected}\n{proc.stdout}\n{proc.stderr}"
        )


def run_block(block: Block, scratch: Path) -> None:
    if block.kind == "not tested":
        assert block.how, f"{block.where}: say why the block is not tested"
        runnable = block.language in _RUNNABLE or (
            block.language in _SHELLS and re.search(r"^\s*stepline\s", block.text, re.MULTILINE)
        )
        assert not runnable, (
            f"{block.where}: a {block.language} block can be tested; mark it <!-- test: ... -->"
        )
        return
    kind = block.how.split()[0]
    if kind == "definition":
        _run_definition(block, scratch)
    elif kind == "fragment":
        _run_fragment(block, scratch)
    elif kind == "file":
        _run_file(block, scratch)
    elif kind == "python":
        _run_python(block, scratch)
    elif kind in ("sh", "help"):
        _run_sh(block, scratch, help_only=kind == "help")
    else:
        pytest.fail(f"{block.where}: unknown test kind {kind!r}")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_examples(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for block in blocks(page):
        run_block(block, tmp_path)


def test_every_setting_is_documented() -> None:
    page = (REPO / "docs" / "settings.md").read_text(encoding="utf-8")
    for name in FIELDS:
        variable = f"STEPLINE_{name.upper()}"
        assert f"`{variable}" in page, f"settings.md does not document {variable}"


def test_the_convention_catches_a_stale_example(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- test: definition -->\n```yaml\nname: x\nsteps: []\n```\n")
    (block,) = blocks(page)
    with pytest.raises(DefinitionError, match="steps must be a non-empty list"):
        run_block(block, tmp_path)
    page.write_text("<!-- test: sh -->\n```sh\nstepline show 1  # exit 0\n```\n")
    (block,) = blocks(page)
    with pytest.raises(AssertionError, match="exited 2, expected 0"):
        run_block(block, tmp_path)
    for language, code in [("python", "x = 1"), ("sh", "pip install x\nstepline show 1")]:
        page.write_text(f"<!-- not tested: why -->\n```{language}\n{code}\n```\n")
        (block,) = blocks(page)
        with pytest.raises(AssertionError, match="can be tested"):
            run_block(block, tmp_path)
    page.write_text("```yaml\nname: x\n```\n")
    with pytest.raises(AssertionError, match="without a <!-- test"):
        blocks(page)
