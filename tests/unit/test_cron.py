"""Table tests for stepline.scheduling.cron: field order, timezones, DST gap and overlap."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from stepline.scheduling.cron import CronError, CronSchedule


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


NY = "America/New_York"  # 2026: EST->EDT 03-08 07:00Z, EDT->EST 11-01 06:00Z
BERLIN = "Europe/Berlin"  # 2026: CET->CEST 03-29 01:00Z, CEST->CET 10-25 01:00Z

# One case per row reads better as a table than formatter-exploded arguments.
# fmt: off
FIRE_TIMES = [
    # Seconds-first 6-field expressions.
    pytest.param(
        "0 0 2 * * 1", "Asia/Seoul", utc(2026, 1, 1),
        [utc(2026, 1, 4, 17), utc(2026, 1, 11, 17)],
        id="6f-monday-0200-kst-is-sunday-1700-utc",
    ),
    pytest.param(
        "*/5 * * * * *", "UTC", utc(2026, 5, 1, 10, 0, 2),
        [utc(2026, 5, 1, 10, 0, 5), utc(2026, 5, 1, 10, 0, 10), utc(2026, 5, 1, 10, 0, 15)],
        id="6f-every-5-seconds",
    ),
    pytest.param(
        "30 15 10 * * *", "Asia/Seoul", utc(2026, 5, 1),
        [utc(2026, 5, 1, 1, 15, 30), utc(2026, 5, 2, 1, 15, 30)],
        id="6f-daily-10:15:30-kst",
    ),
    # Classic 5-field expressions.
    pytest.param(
        "0 9 * * 1-5", "Asia/Seoul", utc(2026, 5, 1),  # Fri 09:00 KST is exactly `after`
        [utc(2026, 5, 4), utc(2026, 5, 5)],
        id="5f-weekdays-strictly-after",
    ),
    pytest.param(
        "*/15 * * * *", "UTC", utc(2026, 5, 1, 10, 7, 30),
        [utc(2026, 5, 1, 10, 15), utc(2026, 5, 1, 10, 30)],
        id="5f-every-15-minutes",
    ),
    pytest.param(
        "0 0 1 * *", BERLIN, utc(2026, 1, 15),
        [utc(2026, 1, 31, 23), utc(2026, 2, 28, 23), utc(2026, 3, 31, 22)],
        id="5f-monthly-midnight-berlin",
    ),
    pytest.param(
        "0 9 * * *", "Asia/Seoul", datetime(2026, 5, 1, 9, tzinfo=ZoneInfo("Asia/Seoul")),
        [utc(2026, 5, 2), utc(2026, 5, 3)],
        id="5f-after-given-in-local-tz",
    ),
    # Spring-forward gap: a missing wall time fires once at the first instant after the gap.
    pytest.param(
        "30 2 * * *", NY, utc(2026, 3, 6, 12),
        [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30)],
        id="ny-daily-in-gap-fires-at-0300-edt",
    ),
    pytest.param(
        "0,30 2,3 * * *", NY, utc(2026, 3, 8, 6),  # 02:00, 02:30 and 03:00 collapse
        [utc(2026, 3, 8, 7), utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6)],
        id="ny-gap-times-and-gap-end-fire-once",
    ),
    pytest.param(
        "0 * * * *", NY, utc(2026, 3, 8, 5, 30),
        [utc(2026, 3, 8, 6), utc(2026, 3, 8, 7), utc(2026, 3, 8, 8), utc(2026, 3, 8, 9)],
        id="ny-hourly-across-gap",
    ),
    pytest.param(
        "30 2 * * *", BERLIN, utc(2026, 3, 28, 12),
        [utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30), utc(2026, 3, 31, 0, 30)],
        id="berlin-daily-in-gap-fires-at-0300-cest",
    ),
    pytest.param(
        "0 * * * *", BERLIN, utc(2026, 3, 29, 0, 30),
        [utc(2026, 3, 29, 1), utc(2026, 3, 29, 2), utc(2026, 3, 29, 3)],
        id="berlin-hourly-across-gap",
    ),
    # Fall-back overlap: a fixed time of day fires once, at its first occurrence; a schedule
    # with hour "*" runs through both passes of the repeated hour.
    pytest.param(
        "30 1 * * *", NY, utc(2026, 10, 31, 12),
        [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30), utc(2026, 11, 3, 6, 30)],
        id="ny-daily-in-overlap-fires-once-at-edt",
    ),
    pytest.param(
        "30 1 * * *", NY, utc(2026, 11, 1, 6, 10),  # 01:10 EST, inside the second pass
        [utc(2026, 11, 2, 6, 30)],
        id="ny-after-inside-second-pass-does-not-refire",
    ),
    pytest.param(
        "0 * * * *", NY, utc(2026, 11, 1, 4, 30),
        [utc(2026, 11, 1, 5), utc(2026, 11, 1, 6), utc(2026, 11, 1, 7)],
        id="ny-hourly-runs-through-both-passes-of-the-overlap",
    ),
    pytest.param(
        "30 2 * * *", BERLIN, utc(2026, 10, 24, 12),
        [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30), utc(2026, 10, 27, 1, 30)],
        id="berlin-daily-in-overlap-fires-once-at-cest",
    ),
    pytest.param(
        "0 * * * *", BERLIN, utc(2026, 10, 24, 23, 30),
        [utc(2026, 10, 25, 0), utc(2026, 10, 25, 1), utc(2026, 10, 25, 2)],
        id="berlin-hourly-runs-through-both-passes-of-the-overlap",
    ),
]
# fmt: on


@pytest.mark.parametrize(("expression", "tz", "after", "expected"), FIRE_TIMES)
def test_fire_times(expression: str, tz: str, after: datetime, expected: list[datetime]) -> None:
    schedule = CronSchedule.parse(expression, tz)
    fires = schedule.fire_times(after, len(expected))
    assert fires == expected
    assert all(fire.tzinfo is UTC for fire in fires)
    assert schedule.next_fire_time(after) == expected[0]


# fmt: off
BETWEEN = [
    pytest.param(
        "* * * * *", NY, utc(2026, 3, 8, 6, 58), utc(2026, 3, 8, 7, 2),
        [utc(2026, 3, 8, 6, 59), utc(2026, 3, 8, 7), utc(2026, 3, 8, 7, 1), utc(2026, 3, 8, 7, 2)],
        id="ny-every-minute-gap",
    ),
    pytest.param(
        "* * * * *", NY, utc(2026, 11, 1, 5, 58), utc(2026, 11, 1, 6, 1),
        [utc(2026, 11, 1, 5, 59), utc(2026, 11, 1, 6), utc(2026, 11, 1, 6, 1)],
        id="ny-every-minute-keeps-running-in-the-second-pass",
    ),
    pytest.param(
        "* * * * * *", NY, utc(2026, 3, 8, 6, 59, 58), utc(2026, 3, 8, 7, 0, 2),
        [utc(2026, 3, 8, 6, 59, 59), utc(2026, 3, 8, 7), utc(2026, 3, 8, 7, 0, 1),
         utc(2026, 3, 8, 7, 0, 2)],
        id="ny-every-second-gap",
    ),
    pytest.param(
        "* * * * * *", BERLIN, utc(2026, 10, 25, 0, 59, 58), utc(2026, 10, 25, 1, 0, 1),
        [utc(2026, 10, 25, 0, 59, 59), utc(2026, 10, 25, 1), utc(2026, 10, 25, 1, 0, 1)],
        id="berlin-every-second-keeps-running-in-the-second-pass",
    ),
    pytest.param(
        "0 * * * *", "UTC", utc(2026, 5, 1, 10), utc(2026, 5, 1, 12),
        [utc(2026, 5, 1, 11), utc(2026, 5, 1, 12)],
        id="start-exclusive-end-inclusive",
    ),
    pytest.param("0 * * * *", "UTC", utc(2026, 5, 1, 12), utc(2026, 5, 1, 10), [], id="empty"),
]
# fmt: on


@pytest.mark.parametrize(("expression", "tz", "start", "end", "expected"), BETWEEN)
def test_fire_times_between(
    expression: str, tz: str, start: datetime, end: datetime, expected: list[datetime]
) -> None:
    assert list(CronSchedule.parse(expression, tz).fire_times_between(start, end)) == expected


TRANSITIONS = [
    pytest.param(utc(2026, 3, 8, 7), NY, id="ny-spring"),
    pytest.param(utc(2026, 11, 1, 6), NY, id="ny-autumn"),
    pytest.param(utc(2026, 3, 29, 1), BERLIN, id="berlin-spring"),
    pytest.param(utc(2026, 10, 25, 1), BERLIN, id="berlin-autumn"),
]


@pytest.mark.parametrize(("transition", "tz"), TRANSITIONS)
@pytest.mark.parametrize(
    ("expression", "half_window"),
    [
        ("*/13 * * * * *", timedelta(hours=2)),
        ("*/7 * * * *", timedelta(days=1)),
        ("0,30 1,2 * * *", timedelta(days=2)),
    ],
)
def test_monotonic_and_unique_across_transitions(
    expression: str, half_window: timedelta, transition: datetime, tz: str
) -> None:
    schedule = CronSchedule.parse(expression, tz)
    start, end = transition - half_window, transition + half_window
    fires = list(schedule.fire_times_between(start, end))
    assert fires
    assert all(start < fire <= end and fire.tzinfo is UTC for fire in fires)
    assert all(a < b for a, b in itertools.pairwise(fires))


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        pytest.param("", "it has 0 fields", id="empty"),
        pytest.param("   ", "it has 0 fields", id="blank"),
        pytest.param("* * * *", "it has 4 fields", id="4-fields"),
        pytest.param("0 0 0 2 * * 1", "it has 7 fields", id="7-fields"),
        pytest.param("@daily", "it has 1 fields", id="alias"),
        pytest.param("60 * * * *", "out of range", id="minute-60"),
        pytest.param("0 25 * * *", "out of range", id="hour-25"),
        pytest.param("61 0 2 * * 1", "out of range", id="second-61"),
        pytest.param("0 0 2 * * 8", "out of range", id="weekday-8"),
        pytest.param("a b c d e", "is not acceptable", id="letters"),
        pytest.param("*/0 * * * *", "step '0'", id="step-zero"),
        pytest.param("0 0 30 2 *", "never matches a real date", id="february-30"),
    ],
)
def test_invalid_expression(expression: str, problem: str) -> None:
    normalised = " ".join(expression.split())
    with pytest.raises(CronError, match=re.escape(f'invalid cron "{normalised}": ')) as info:
        CronSchedule.parse(expression, "UTC")
    assert problem in str(info.value)
    if "fields" in problem:
        assert "expected 5 fields (minute hour day month weekday) or 6 with leading seconds" in (
            str(info.value)
        )


@pytest.mark.parametrize("expression", [None, 5, ["0", "0", "*", "*", "*"]])
def test_non_string_expression(expression: object) -> None:
    with pytest.raises(CronError, match="not a string"):
        CronSchedule.parse(expression, "UTC")  # type: ignore[arg-type]


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "America", "../etc/passwd", "utc", None])
def test_invalid_timezone(tz: object) -> None:
    with pytest.raises(CronError, match=re.escape(repr(tz))):
        CronSchedule.parse("0 0 * * *", tz)  # type: ignore[arg-type]


def test_cron_error_is_value_error() -> None:
    assert issubclass(CronError, ValueError)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(CronError):
        CronSchedule("0 0 * *", "UTC")


def test_parse_normalises_whitespace() -> None:
    schedule = CronSchedule.parse("  0\t9  * * * ", "Asia/Seoul")
    assert schedule == CronSchedule("0 9 * * *", "Asia/Seoul")


@pytest.mark.parametrize("method", ["next_fire_time", "fire_times", "fire_times_between"])
def test_naive_datetime_rejected(method: str) -> None:
    schedule = CronSchedule.parse("0 * * * *", "UTC")
    naive = datetime(2026, 5, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        if method == "next_fire_time":
            schedule.next_fire_time(naive)
        elif method == "fire_times":
            schedule.fire_times(naive, 1)
        else:
            schedule.fire_times_between(utc(2026, 5, 1), naive)
