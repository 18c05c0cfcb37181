"""Table tests for stepline.core.durations.parse_duration."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from stepline.core.durations import parse_duration

VALID = [
    pytest.param("500ms", timedelta(milliseconds=500), id="milliseconds"),
    pytest.param("2s", timedelta(seconds=2), id="seconds"),
    pytest.param("1m", timedelta(minutes=1), id="minutes"),
    pytest.param("10m", timedelta(minutes=10), id="ten-minutes"),
    pytest.param("1h30m", timedelta(hours=1, minutes=30), id="hours-and-minutes"),
    pytest.param("1h 30m", timedelta(hours=1, minutes=30), id="spaces-between-parts"),
    pytest.param("1m30s", timedelta(minutes=1, seconds=30), id="m-then-s-is-not-ms"),
    pytest.param("1d", timedelta(days=1), id="days"),
    pytest.param("1.5h", timedelta(minutes=90), id="fractional-unit"),
    pytest.param("  2s  ", timedelta(seconds=2), id="surrounding-whitespace"),
    pytest.param("1.5", timedelta(seconds=1.5), id="numeric-string-is-seconds"),
    pytest.param("0s", timedelta(0), id="zero-with-unit"),
    pytest.param(3, timedelta(seconds=3), id="int-is-seconds"),
    pytest.param(2.5, timedelta(seconds=2.5), id="float-is-seconds"),
    pytest.param(0, timedelta(0), id="zero"),
    pytest.param(timedelta(minutes=7), timedelta(minutes=7), id="timedelta-passes-through"),
]

INVALID = [
    pytest.param(-1, "must not be negative", id="negative-int"),
    pytest.param(-0.5, "must not be negative", id="negative-float"),
    pytest.param("-1s", "'-1s'", id="negative-with-unit"),
    pytest.param(
        "-5",
        "negative",
        id="negative-numeric-string",
    ),
    pytest.param(True, "True", id="bool-true"),
    pytest.param(False, "False", id="bool-false"),
    pytest.param("soon", "'soon'", id="garbage-word"),
    pytest.param("10 minutes", "'10 minutes'", id="unit-spelled-out"),
    pytest.param("5x", "'5x'", id="unknown-unit"),
    pytest.param("1h30", "'1h30'", id="trailing-number-without-unit"),
    pytest.param("h", "'h'", id="unit-without-number"),
    pytest.param("2S", "'2S'", id="uppercase-unit"),
    pytest.param("", "''", id="empty"),
    pytest.param("   ", "''", id="only-whitespace"),
    pytest.param(None, "None", id="none"),
    pytest.param(
        math.inf,
        "inf",
        id="infinity",
    ),
    pytest.param(
        "99999999999d",
        "99999999999d",
        id="too-large",
    ),
]


@pytest.mark.parametrize(("value", "expected"), VALID)
def test_parse_duration_accepts(value: object, expected: timedelta) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(("value", "named"), INVALID)
def test_parse_duration_rejects_naming_the_value(value: object, named: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_duration(value)
    assert named in str(info.value)


def test_error_lists_the_accepted_forms() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("fortnight")
    for form in ("500ms", "30s", "10m", "1h30m", "1d", "seconds"):
        assert form in str(info.value)
