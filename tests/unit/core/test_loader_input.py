"""Definition files a user got wrong: a repeated key is refused (naming the key and its
lines), merges may still override, and a huge name is cut in the message that echoes it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stepline.core.loader import _LOADER, _UniqueKeyLoader, parse_definition, read_document
from stepline.errors import DefinitionError, Problem, clip, shown


def problem_text(path: Path) -> str:
    with pytest.raises(DefinitionError) as caught:
        read_document(path)
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "key", "first", "again"),
    [
        ("name: a\nsteps: []\nname: b\n", "name", 1, 3),
        ("name: a\nsteps:\n  - key: x\n    runner: m:f\n    key: y\n", "key", 3, 5),
        ("name: a\nparams: {period: WEEK, period: DAY}\n", "period", 2, 2),
        ("name: a\nsteps:\n  - key: x\n    with: {n: 1}\n    with: {n: 2}\n", "with", 4, 5),
        ("name: a\n1: x\n'1': y\n1: z\n", 1, 2, 4),
    ],
)
def test_a_repeated_yaml_key_is_refused_naming_it_and_both_lines(
    tmp_path: Path, text: str, key: object, first: int, again: int
) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    message = problem_text(path)
    assert f"found duplicate key {key!r} (first on line {first})" in message
    assert f"line {again}," in message
    assert message.startswith(f"{path}: not valid YAML")


ROOT = Path(__file__).parents[3]
YAML_FILES = sorted([*ROOT.glob("examples/**/*.yaml"), *ROOT.glob("tests/**/*.yaml")])
BROKEN = [
    "name: [unclosed\nsteps: {",
    "name: a\n  steps: b\n",
    "name: a\nsteps:\n\t- key: x\n",
    "name: a\nname: b\n",
    "a: *missing\n",
]


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml")
@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_libyaml_reads_a_file_as_pyyaml_does(path: Path) -> None:
    """Definitions are parsed by libyaml when PyYAML has it; the values are PyYAML's."""
    text = path.read_text(encoding="utf-8")
    assert yaml.load(text, Loader=_LOADER) == yaml.load(text, Loader=_UniqueKeyLoader)


@pytest.mark.parametrize("text", BROKEN)
def test_a_broken_file_gets_pyyamls_own_message(tmp_path: Path, text: str) -> None:
    """libyaml's errors show no line of the file; the message is PyYAML's, which does."""
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(yaml.YAMLError) as expected:
        yaml.load(text, Loader=_UniqueKeyLoader)
    # PyYAML's message, with the file's name where it says "<unicode string>".
    message = str(expected.value).replace('"<unicode string>"', '"broken.yaml"')
    assert problem_text(path) == f"{path}: not valid YAML: {message}"
    assert "<unicode string>" not in problem_text(path)


def test_a_merged_key_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text(
        "base: &base {runner: m:f, retry: 2}\nsteps:\n  - {<<: *base, key: a, retry: 3}\n"
    )
    document = read_document(path)
    assert isinstance(document, dict)
    assert document["steps"] == [{"runner": "m:f", "retry": 3, "key": "a"}]


def test_a_repeated_json_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text('{"name": "a", "steps": [{"key": "x", "key": "y"}]}')
    assert "not valid JSON: duplicate key 'key'" in problem_text(path)


def test_a_huge_name_is_cut_with_its_length() -> None:
    name = "N" * 100_000
    with pytest.raises(DefinitionError) as caught:
        parse_definition({"name": name, "steps": [{"key": "a" * 100_000, "runner": "m:f"}]})
    message = str(caught.value)
    assert len(message) < 1_000
    assert re.search(r"'N{200}'… \(100,000 characters\) must be", message)
    assert "… (100,000 characters) (letters" in message


def test_clip_and_shown_leave_short_text_alone() -> None:
    assert clip("short") == "short" and shown("short") == "'short'"
    assert clip("x" * 201) == "x" * 200 + "… (201 characters)"
    assert str(Problem("bad", "f" * 300, "s")).startswith("f" * 200 + "… (300 characters): ")
