"""Table tests for stepline.scheduling.cron: field order, timezones, DST gap and overlap."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, date, datetime, time, timedelta
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
        pytest.param("0 0 2 * * 1 2026", "7th year field", id="quartz-year"),
        pytest.param("60 * * * *", 'minute "60" is out of range 0-59', id="minute-60"),
        pytest.param("0 25 * * *", 'hour "25" is out of range 0-23', id="hour-25"),
        pytest.param("61 0 2 * * 1", 'second "61" is out of range 0-59', id="second-61"),
        pytest.param("0 0 2 * * 8", 'day-of-week "8" is out of range 0-7', id="weekday-8"),
        pytest.param("0 0 0 * *", 'day-of-month "0" is out of range 1-31', id="day-0"),
        pytest.param("0 0 * 13 *", 'month "13" is out of range 1-12', id="month-13"),
        pytest.param("a b c d e", 'minute "a" is not a number', id="letters"),
        pytest.param("0 0 * JANUARY *", "not a number or a name (JAN-DEC)", id="month-name"),
        pytest.param("*/0 * * * *", 'the step after "/" must be a whole number', id="step-zero"),
        pytest.param("1,,2 * * * *", "empty list item", id="empty-item"),
        pytest.param("0 0 * * FRI-MON", 'range "FRI-MON" runs backwards', id="backwards"),
        pytest.param("0 0 30 2 *", "never matches a real date", id="february-30"),
        pytest.param("0 0 31 4,6,9,11 *", "never matches a real date", id="31-in-30-day-months"),
        pytest.param("0 0 */31 * 5#5", "never matches", id="and-never"),
        pytest.param("0 ? * * *", '"?" is allowed only in day-of-month and day-of-week', id="?"),
        pytest.param("0 0 * * 5#6", 'the week after "#" must be 1-5', id="nth-6"),
        pytest.param("0 0 * * L", 'write SAT or 6, or "5L"', id="quartz-dow-L"),
        pytest.param("0 0 L-3W * *", 'supported forms are "L" (last day), "L-2"', id="L-3W"),
        pytest.param("0 0 L-31 * *", "the offset must be 0-30", id="L-31"),
        pytest.param("0 0 1W-3 * *", '"15W" (the weekday nearest the 15th)', id="W-range"),
        pytest.param(
            "@reboot", 'has no fire times; run the batch with "stepline run"', id="reboot"
        ),
        pytest.param("@often", 'unknown alias "@often"; expected one of @yearly', id="alias"),
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


def days(expression: str, after: date, n: int) -> list[date]:
    """The dates of the next ``n`` fire times in UTC (the schedules below fire once a day)."""
    start = datetime.combine(after, time(), UTC)
    return [fire.date() for fire in CronSchedule.parse(expression, "UTC").fire_times(start, n)]


def d(month: int, day: int, year: int = 2026) -> date:
    return date(year, month, day)


# crontab(5): a day field is restricted unless it starts with "*"; when both are restricted a
# day matches if either matches, otherwise both must match. April 2026 starts on a Wednesday.
# fmt: off
DAY_FIELDS = [
    pytest.param("0 0 1-7 * */7", d(2, 28), [d(3, 1), d(4, 5), d(5, 3)],
                 id="first-sunday-star-led-weekday-is-and"),
    pytest.param("0 0 1,15 * MON", d(4, 30), [d(5, 1), d(5, 4), d(5, 11), d(5, 15), d(5, 18)],
                 id="both-restricted-is-or"),
    pytest.param("0 0 */2 * MON", d(5, 1), [d(5, 11), d(5, 25), d(6, 1)],
                 id="star-led-day-of-month-is-and"),
    pytest.param("0 0 ? * MON", d(5, 1), [d(5, 4), d(5, 11)], id="quartz-question-mark-is-star"),
    pytest.param("0 0 13 * 5#2", d(4, 1), [d(4, 10), d(4, 13), d(5, 8), d(5, 13)],
                 id="nth-weekday-or-day-of-month"),
    pytest.param("0 0 * * 5,L5", d(4, 1), [d(4, 3), d(4, 10), d(4, 17), d(4, 24), d(5, 1)],
                 id="fridays-and-last-friday-is-every-friday"),
    pytest.param("0 0 * * L5", d(4, 1), [d(4, 24), d(5, 29)], id="last-friday-L5"),
    pytest.param("0 0 * * 5L", d(4, 1), [d(4, 24), d(5, 29)], id="last-friday-quartz-5L"),
    pytest.param("0 0 * * FRIL", d(4, 1), [d(4, 24), d(5, 29)], id="last-friday-by-name"),
    pytest.param("0 0 L * *", d(4, 1), [d(4, 30), d(5, 31), d(6, 30)], id="last-day"),
    pytest.param("0 0 LW * *", d(4, 1), [d(4, 30), d(5, 29), d(6, 30)], id="last-weekday"),
    pytest.param("0 0 L-2 * *", d(4, 1), [d(4, 28), d(5, 29), d(6, 28)], id="L-minus-2"),
    pytest.param("0 0 1W * *", d(7, 15), [d(8, 3), d(9, 1)], id="1W-saturday-moves-to-monday"),
    pytest.param("0 0 15W * *", d(11, 1), [d(11, 16), d(12, 15)], id="15W-sunday-to-monday"),
    pytest.param("0 0 31W * *", d(3, 30), [d(3, 31), d(5, 29)], id="31W-skips-30-day-months"),
    pytest.param("0 0 * * 7", d(4, 1), [d(4, 5), d(4, 12)], id="7-is-sunday"),
    pytest.param("0 0 * * 5-7", d(4, 1), [d(4, 3), d(4, 4), d(4, 5), d(4, 10)],
                 id="range-to-7-includes-sunday"),
    pytest.param("0 0 2 * * 5-7", d(4, 1), [d(4, 3), d(4, 4), d(4, 5), d(4, 10)],
                 id="6-field-range-to-7-includes-sunday"),
    pytest.param("0 0 0 * * 7#1", d(4, 1), [d(4, 5), d(5, 3)], id="6-field-7#1"),
    pytest.param("0 0 * * 1/2", d(4, 1), [d(4, 3), d(4, 5), d(4, 6), d(4, 8)],
                 id="N/step-runs-to-7-sunday"),
    pytest.param("30 0 31 4 SAT,SUN", d(4, 1),
                 [d(4, 4), d(4, 5), d(4, 11), d(4, 12), d(4, 18), d(4, 19), d(4, 25), d(4, 26),
                  d(4, 3, 2027)], id="april-31-never-refuses-april-weekends"),
    pytest.param("0 0 29 2 *", d(1, 1), [d(2, 29, 2028), d(2, 29, 2032)], id="leap-day"),
    pytest.param("0 0 29 2 MON", d(1, 1), [d(2, 2), d(2, 9)], id="leap-day-or-mondays"),
    pytest.param("0 0 1 jan-mar/2 *", d(1, 1), [d(3, 1), d(1, 1, 2027)], id="month-names-step"),
]
# fmt: on


@pytest.mark.parametrize(("expression", "after", "expected"), DAY_FIELDS)
def test_day_fields(expression: str, after: date, expected: list[date]) -> None:
    assert days(expression, after, len(expected)) == expected


@pytest.mark.parametrize(
    ("alias", "expression"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_aliases(alias: str, expression: str) -> None:
    start = utc(2026, 3, 7, 12)
    ours = CronSchedule.parse(alias, NY)
    assert ours.expression == alias
    assert ours.fire_times(start, 30) == CronSchedule.parse(expression, NY).fire_times(start, 30)


LORD_HOWE = "Australia/Lord_Howe"  # 2026: +11 -> +10:30 04-04 15:00Z, back 10-03 15:30Z

# Overlap (fall back): a fixed-time schedule fires once, an interval schedule (more than once
# an hour, or every hour) fires in both passes. NY repeats 01:00-02:00 on 2026-11-01.
# fmt: off
OVERLAPS = [
    pytest.param("*/15 1-3 * * *", NY, utc(2026, 11, 1, 4),
                 [utc(2026, 11, 1, 5), utc(2026, 11, 1, 5, 15), utc(2026, 11, 1, 5, 30),
                  utc(2026, 11, 1, 5, 45), utc(2026, 11, 1, 6), utc(2026, 11, 1, 6, 15),
                  utc(2026, 11, 1, 6, 30), utc(2026, 11, 1, 6, 45), utc(2026, 11, 1, 7)],
                 id="every-15-minutes-in-named-hours-keeps-both-passes"),
    pytest.param("0,30 1 * * *", NY, utc(2026, 11, 1, 4),
                 [utc(2026, 11, 1, 5), utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6),
                  utc(2026, 11, 1, 6, 30), utc(2026, 11, 2, 6)],
                 id="twice-an-hour-is-more-often-than-hourly"),
    pytest.param("0 1-3 * * *", NY, utc(2026, 11, 1, 4),
                 [utc(2026, 11, 1, 5), utc(2026, 11, 1, 7), utc(2026, 11, 1, 8)],
                 id="once-an-hour-in-named-hours-is-fixed-time"),
    pytest.param("0 0-23 * * *", NY, utc(2026, 11, 1, 4, 30),
                 [utc(2026, 11, 1, 5), utc(2026, 11, 1, 6), utc(2026, 11, 1, 7)],
                 id="all-24-hours-spelled-out-is-hourly"),
    pytest.param("*/15 1 * * *", NY, utc(2026, 11, 1, 5, 50),  # 01:50 EDT, first pass
                 [utc(2026, 11, 1, 6), utc(2026, 11, 1, 6, 15), utc(2026, 11, 1, 6, 30),
                  utc(2026, 11, 1, 6, 45), utc(2026, 11, 2, 6)],
                 id="after-late-in-first-pass-still-gets-the-second-pass"),
    pytest.param("*/15 1 * * *", NY, utc(2026, 11, 1, 6, 20),  # 01:20 EST, second pass
                 [utc(2026, 11, 1, 6, 30), utc(2026, 11, 1, 6, 45), utc(2026, 11, 2, 6)],
                 id="after-in-second-pass"),
    pytest.param("0 20,40 2 * * *", BERLIN, utc(2026, 10, 24, 23),
                 [utc(2026, 10, 25, 0, 20), utc(2026, 10, 25, 0, 40), utc(2026, 10, 25, 1, 20),
                  utc(2026, 10, 25, 1, 40), utc(2026, 10, 26, 1, 20)],
                 id="berlin-6-field-twice-an-hour"),
    pytest.param("*/10 1 * * *", LORD_HOWE, utc(2026, 4, 4, 13, 55),  # repeats 01:30-02:00
                 [utc(2026, 4, 4, 14), utc(2026, 4, 4, 14, 10), utc(2026, 4, 4, 14, 20),
                  utc(2026, 4, 4, 14, 30), utc(2026, 4, 4, 14, 40), utc(2026, 4, 4, 14, 50),
                  utc(2026, 4, 4, 15), utc(2026, 4, 4, 15, 10), utc(2026, 4, 4, 15, 20),
                  utc(2026, 4, 5, 14, 30)],
                 id="lord-howe-half-hour-overlap-second-pass"),
    pytest.param("45 1 * * *", LORD_HOWE, utc(2026, 4, 4, 12),
                 [utc(2026, 4, 4, 14, 45), utc(2026, 4, 5, 15, 15)],
                 id="lord-howe-fixed-time-fires-once"),
    pytest.param("15 2 * * *", LORD_HOWE, utc(2026, 10, 3, 12),  # 02:00-02:30 missing
                 [utc(2026, 10, 3, 15, 30), utc(2026, 10, 4, 15, 15)],
                 id="lord-howe-half-hour-gap"),
    pytest.param("30 2 * * *", "Asia/Seoul", utc(1987, 5, 9, 12),  # Seoul kept DST in 1987
                 [utc(1987, 5, 9, 17), utc(1987, 5, 10, 16, 30)],
                 id="seoul-1987-gap"),
    pytest.param("5-55/10 * * * *", NY, utc(2026, 3, 8, 6, 50),
                 [utc(2026, 3, 8, 6, 55), utc(2026, 3, 8, 7), utc(2026, 3, 8, 7, 5)],
                 id="interval-gap-times-also-fire-once-after-the-gap"),
]
# fmt: on


@pytest.mark.parametrize(("expression", "tz", "after", "expected"), OVERLAPS)
def test_daylight_saving_policy(
    expression: str, tz: str, after: datetime, expected: list[datetime]
) -> None:
    assert CronSchedule.parse(expression, tz).fire_times(after, len(expected)) == expected


@pytest.mark.parametrize(
    ("expression", "interval"),
    [
        ("*/15 1-3 * * *", True),
        ("* 2 * * *", True),
        ("0,30 9 * * *", True),
        ("0 * * * *", True),
        ("@hourly", True),
        ("0 0-23 * * *", True),
        ("*/30 0 2 * * *", True),
        ("0 1-3 * * *", False),
        ("0 */2 * * *", False),
        ("30 1 * * *", False),
        ("@daily", False),
        ("0 0 2 * * 1", False),
    ],
)
def test_interval_means_more_often_than_hourly_or_every_hour(
    expression: str, interval: bool
) -> None:
    assert CronSchedule.parse(expression, "UTC").interval is interval


def test_every_second_from_inside_the_second_pass() -> None:
    schedule = CronSchedule.parse("* * * * * *", NY)
    start = utc(2026, 11, 1, 6, 30)  # 01:30:00 EST, second pass
    assert list(schedule.fire_times_between(start, start + timedelta(seconds=3))) == [
        start + timedelta(seconds=s) for s in (1, 2, 3)
    ]
