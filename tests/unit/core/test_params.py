"""``--param k=v``: every value ends up as JSON, or is refused with a message."""

from __future__ import annotations

import json

import pytest

from stepline.core.params import parse_param, parse_params


@pytest.mark.parametrize(
    ("item", "value"),
    [
        ("base_date=2024-06-05", "2024-06-05"),
        ("at=2024-06-05 10:00:00", "2024-06-05T10:00:00"),
        ("at=2024-06-05T10:00:00+09:00", "2024-06-05T10:00:00+09:00"),
        ("n=5", 5),
        ("x=2.5", 2.5),
        ("flag=true", True),
        ("none=null", None),
        ("period=WEEK", "WEEK"),
        ('code="007"', "007"),
        ("code='2024-06-05'", "2024-06-05"),
        ("empty=", ""),
        ("farms=[F001, F002]", ["F001", "F002"]),
        ("days=[2024-06-03, 2024-06-04]", ["2024-06-03", "2024-06-04"]),
        ("window={from: 2024-06-03, n: 2}", {"from": "2024-06-03", "n": 2}),
        ("q=a: b: c", "a: b: c"),  # not YAML: kept as typed
        ("url=https://x/?a=1", "https://x/?a=1"),  # only the first '=' splits
    ],
)
def test_values_become_json(item: str, value: object) -> None:
    key, parsed = parse_param(item)

    assert parsed == value
    assert json.loads(json.dumps(parsed)) == value
    assert key == item.partition("=")[0]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("x=.nan", "--param x=.nan: nan is not a JSON number"),
        ("x=.inf", "--param x=.inf: inf is not a JSON number"),
        ("x=!!binary aGVsbG8=", "has no JSON form"),
        ("x=!!set {a, b}", "has no JSON form"),
        ("x={1: a}", "keys must be text"),
        ("novalue", "must be key=value"),
        ("=5", "must be key=value"),
    ],
)
def test_values_json_cannot_hold_are_refused(item: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_param(item)

    assert message in str(raised.value)


def test_a_refusal_says_how_to_pass_text() -> None:
    with pytest.raises(ValueError) as raised:
        parse_param("x=.nan")

    assert """--param 'x=".nan"'""" in str(raised.value)


def test_later_values_override_earlier_ones() -> None:
    assert parse_params(["a=1", "b=2", "a=3"]) == {"a": 3, "b": 2}
