"""Tests for stepline.core.templates: typed whole templates, rendered text, nesting, errors."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from stepline.core import templates
from stepline.core.templates import TemplateError, check_templates, has_templates, resolve

NAMESPACE: dict[str, Any] = {
    "params": {"period": "WEEK", "limit": 5, "ratio": 0.5, "flag": False, "none": None},
    "results": MappingProxyType(
        {
            "check": {"count": 3, "ok": True, "detail": {"rows": [1, 2]}},
            "farms": [{"id": "F1"}, {"id": "F2"}],
        }
    ),
    "item": {"lat": 37.5, "lon": 127.0},
}

WHOLE = [
    ("{{ params.limit }}", 5),
    ("{{params.limit}}", 5),
    ("{{   params.period   }}", "WEEK"),
    ("{{ params.ratio }}", 0.5),
    ("{{ params.flag }}", False),
    ("{{ params.none }}", None),
    ("{{ results.farms }}", [{"id": "F1"}, {"id": "F2"}]),
    ("{{ results.check.detail }}", {"rows": [1, 2]}),
    ("{{ results.farms[1].id }}", "F2"),
    ("{{ item.lat }}", 37.5),
    ("{{ len(results.farms) }}", 2),
    ("{{ results.check.count > 2 }}", True),
    ("{{ [item.lat, item.lon] }}", [37.5, 127.0]),
    ("{{ params.none or 'default' }}", "default"),
    ("{{ 'a}b' }}", "a}b"),
]


@pytest.mark.parametrize(("template", "expected"), WHOLE, ids=[t for t, _ in WHOLE])
def test_a_whole_string_template_keeps_the_value_type(template: str, expected: Any) -> None:
    value = resolve(template, NAMESPACE)
    assert value == expected
    assert type(value) is type(expected)


EMBEDDED = [
    ("period={{ params.period }}", "period=WEEK"),
    ("{{ params.limit }} rows", "5 rows"),
    ("{{ params.limit }}{{ params.period }}", "5WEEK"),
    ("{{ item.lat }},{{ item.lon }}", "37.5,127.0"),
    ("flag: {{ params.flag }}", "flag: False"),
    ("none: [{{ params.none }}]", "none: []"),
    ("rows: {{ results.check.detail.rows }}", "rows: [1, 2]"),
    ("n={{ len(results.farms) }}/{{ results.check.count }}", "n=2/3"),
    ("  {{ params.limit }}", "  5"),
    ("{{ params.limit }}\n", "5\n"),
    ("a {{\n params.period \n}} b", "a WEEK b"),
    ("braces } and { stay", "braces } and { stay"),
]


@pytest.mark.parametrize(("template", "expected"), EMBEDDED, ids=[t for t, _ in EMBEDDED])
def test_templates_inside_text_render_as_text(template: str, expected: str) -> None:
    assert resolve(template, NAMESPACE) == expected


def test_nested_structures_are_walked_and_copied() -> None:
    args = {
        "procedure": "SP_INS_WEEK_MAIN",
        "args": ["{{ params.period }}", None],
        "options": {"limit": "{{ params.limit }}", "pair": ("{{ item.lat }}", 1), "on": True},
        "label": "week {{ params.period }}",
    }
    resolved = resolve(args, NAMESPACE)
    assert resolved == {
        "procedure": "SP_INS_WEEK_MAIN",
        "args": ["WEEK", None],
        "options": {"limit": 5, "pair": (37.5, 1), "on": True},
        "label": "week WEEK",
    }
    assert args["args"] == ["{{ params.period }}", None]
    assert resolved["args"] is not args["args"]
    assert resolved["options"] is not args["options"]


def test_read_only_mappings_resolve_to_dicts() -> None:
    assert resolve(MappingProxyType({"x": "{{ params.limit }}"}), NAMESPACE) == {"x": 5}


def test_dict_keys_are_not_templated() -> None:
    assert resolve({"{{ params.period }}": 1}, NAMESPACE) == {"{{ params.period }}": 1}


@pytest.mark.parametrize("value", [None, 3, 2.5, True, "plain text", "{ single }", "}}"])
def test_values_without_templates_come_back_unchanged(value: Any) -> None:
    assert resolve(value, NAMESPACE) is value


def test_strings_without_templates_skip_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(text: str) -> None:
        raise AssertionError(f"parsed {text!r}")

    monkeypatch.setattr(templates, "_parse", parse)
    assert resolve(["plain", {"k": "also plain"}], {}) == ["plain", {"k": "also plain"}]


def test_values_produced_by_a_template_are_not_resolved_again() -> None:
    namespace = {"params": {"x": "{{ params.secret }}", "secret": "leaked"}}
    assert resolve("{{ params.x }}", namespace) == "{{ params.secret }}"
    assert resolve("value: {{ params.x }}", namespace) == "value: {{ params.secret }}"


def test_an_unknown_reference_names_the_template_and_the_missing_path() -> None:
    with pytest.raises(TemplateError) as raised:
        resolve({"args": ["ok", "x {{ results.check.total }}"]}, NAMESPACE)
    assert str(raised.value) == (
        "template '{{ results.check.total }}': results.check.total: 'total' is not in results.check"
    )


def test_an_unknown_name_names_the_template() -> None:
    with pytest.raises(TemplateError, match=r"^template '\{\{ item.lat \}\}': item: 'item'"):
        resolve("{{ item.lat }}", {"params": {}, "results": {}})


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ params.limit ** 2 }}", "template '{{ params.limit ** 2 }}': expression "),
        ("{{ __import__('os') }}", "call of __import__() is not allowed"),
        ("{{ params.__class__ }}", "dunder attribute '__class__' is not allowed"),
        ("{{ }}", "template '{{ }}': expression '': it is empty"),
        ("x {{ params.limit", "'x {{ params.limit': '{{' without a closing '}}'"),
        ("{{ a }} {{ b", "'{{' without a closing '}}'"),
    ],
)
def test_invalid_templates_raise_template_error(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as raised:
        resolve(template, NAMESPACE)
    assert message in str(raised.value)


def test_template_error_is_a_value_error() -> None:
    assert issubclass(TemplateError, ValueError)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{{ params.x }}", True),
        ("a {{ params.x }} b", True),
        ("plain", False),
        ({"a": [1, ("x", "{{ item }}")]}, True),
        ({"a": [1, ("x", "y")], "{{ key }}": 1}, False),
        (None, False),
        (42, False),
    ],
)
def test_has_templates(value: Any, expected: bool) -> None:
    assert has_templates(value) is expected


def test_check_templates_locates_each_problem() -> None:
    args = {
        "procedure": "SP_INS_WEEK_MAIN",
        "args": ["{{ params.period }}", "{{ params.limit ** 2 }}", "x {{ oops"],
        "options": {"url": "https://{{ paramz.host }}/x", "fine": "{{ len(results.farms) }}"},
    }
    problems = check_templates(args)
    assert len(problems) == 3
    assert problems[0].startswith("args[1]: template '{{ params.limit ** 2 }}': ")
    assert "operator ** is not allowed" in problems[0]
    assert problems[1] == "args[2]: 'x {{ oops': '{{' without a closing '}}'"
    assert problems[2].startswith("options.url: template '{{ paramz.host }}': ")
    assert "unknown name 'paramz'" in problems[2]


def test_check_templates_accepts_valid_templates_and_plain_values() -> None:
    assert check_templates({"a": ["{{ params.x }}", 1, None], "b": "text {{ item.y }}"}) == []
    assert check_templates("plain") == []


def test_check_templates_passes_the_allowed_names_on() -> None:
    assert check_templates("{{ item.lat }}", names=("params", "results"))
    assert check_templates("{{ anything.goes }}", names=None) == []


def test_check_templates_on_a_bare_string_has_no_location_prefix() -> None:
    assert check_templates("{{ 2 ** 2 }}")[0].startswith("template '{{ 2 ** 2 }}': ")
