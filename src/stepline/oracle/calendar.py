"""Oracle DBMS_SCHEDULER calendaring expressions: parse, convert to cron, cross-check.

``FREQ=WEEKLY;BYDAY=MON;BYHOUR=2;BYMINUTE=0;BYSECOND=0`` becomes the crontab(5) expression
``0 0 2 * * 1`` (6 fields, seconds first), evaluated in the job's ``start_date`` time zone.
A rule is converted only when the cron expression fires at exactly the same wall-clock
times; otherwise :class:`Unconvertible` says why and what to write instead. Missing fields
are taken from ``start_date``, as Oracle (and RFC 5545, which its syntax follows) does.

The independent check is :func:`rrule_fire_times`: the same rule evaluated by
``dateutil.rrule``, an implementation of RFC 5545's RRULE.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from dateutil import rrule as du

from stepline.scheduling.cron import CronError, CronSchedule

__all__ = ["CalendarRule", "Unconvertible", "parse_calendar", "rrule_fire_times", "to_cron"]

FREQUENCIES = ("YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY", "SECONDLY")
_DAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTH_DAYS = {1: 31, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}
_REFUSED = {
    "BYWEEKNO": (
        "ISO week numbers have no cron field",
        "schedule the weekday with cron and let the first step end the run in other weeks",
    ),
    "BYYEARDAY": (
        "a day of the year falls on different dates in leap years",
        "use BYMONTH and BYMONTHDAY dates instead",
    ),
    "BYSETPOS": (
        "it picks the n-th of a set of dates (e.g. the last workday of a month)",
        "schedule every candidate day with cron and let the first step end the run on "
        "the days that are not the n-th",
    ),
    "INCLUDE": (
        "it combines named schedules; a batch has one cron expression",
        "write one batch per included schedule",
    ),
    "EXCLUDE": (
        "it removes the dates of a named schedule (e.g. holidays)",
        "keep the cron and let the first step end the run on excluded dates",
    ),
    "INTERSECT": (
        "it intersects named schedules; a batch has one cron expression",
        "write the intersection as one calendaring rule",
    ),
    "PERIODS": ("fiscal periods have no cron field", "write calendar dates instead"),
    "BYPERIOD": ("fiscal periods have no cron field", "write calendar dates instead"),
}


class Unconvertible(ValueError):
    """A calendaring expression that cron cannot express exactly: why, and what to do."""

    def __init__(self, reason: str, instead: str) -> None:
        super().__init__(f"{reason}; {instead}")
        self.reason = reason
        self.instead = instead


@dataclass(frozen=True)
class CalendarRule:
    """One parsed ``repeat_interval`` (the parts cron can map; others are refused)."""

    freq: str
    interval: int = 1
    bymonth: tuple[int, ...] = ()
    bymonthday: tuple[int, ...] = ()
    byday: tuple[tuple[int | None, int], ...] = ()  # (ordinal or None, weekday Mon=0)
    byhour: tuple[int, ...] = ()
    byminute: tuple[int, ...] = ()
    bysecond: tuple[int, ...] = ()
    text: str = field(default="", compare=False)

    @property
    def rank(self) -> int:
        return FREQUENCIES.index(self.freq)


def parse_calendar(text: str) -> CalendarRule:
    """Parse ``repeat_interval``; raises Unconvertible for what cron cannot follow."""
    parts = [p.strip() for p in text.strip().rstrip(";").split(";") if p.strip()]
    if not parts or not parts[0].upper().replace(" ", "").startswith("FREQ="):
        raise Unconvertible(
            f"{text!r} is not a calendaring expression (a PL/SQL date expression or a list "
            "of named schedules)",
            "write the schedule as a cron expression by hand",
        )
    values: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip().upper()
        if not sep or not value.strip():
            raise Unconvertible(f"{part!r} is not KEY=VALUE", "fix the expression")
        if key in _REFUSED:
            reason, instead = _REFUSED[key]
            raise Unconvertible(f"{key} cannot be converted: {reason}", instead)
        values[key] = value.strip().upper()
    freq = values.pop("FREQ")
    if freq not in FREQUENCIES:
        raise Unconvertible(
            f"FREQ={freq} names a schedule (a user-defined frequency)",
            "convert that schedule's own calendaring rule instead",
        )
    rule = CalendarRule(
        freq=freq,
        interval=_number(values.pop("INTERVAL", "1"), "INTERVAL", 1, 999),
        bymonth=tuple(_month(v) for v in _items(values.pop("BYMONTH", ""))),
        bymonthday=tuple(
            _number(v, "BYMONTHDAY", -31, 31, nonzero=True)
            for v in _items(values.pop("BYMONTHDAY", ""))
        ),
        byday=tuple(_weekday(v) for v in _items(values.pop("BYDAY", ""))),
        byhour=tuple(_number(v, "BYHOUR", 0, 23) for v in _items(values.pop("BYHOUR", ""))),
        byminute=tuple(_number(v, "BYMINUTE", 0, 59) for v in _items(values.pop("BYMINUTE", ""))),
        bysecond=tuple(_number(v, "BYSECOND", 0, 59) for v in _items(values.pop("BYSECOND", ""))),
        text=text,
    )
    dates = [_bydate(v) for v in _items(values.pop("BYDATE", ""))]
    if values:
        raise Unconvertible(
            f"unknown calendaring keyword(s) {', '.join(sorted(values))}", "fix the expression"
        )
    if dates:
        months, days = sorted({m for m, _ in dates}), sorted({d for _, d in dates})
        if rule.bymonth or rule.bymonthday or set(dates) != set(itertools.product(months, days)):
            raise Unconvertible(
                "BYDATE lists dates whose months and days do not form a grid (cron matches "
                "every listed day in every listed month)",
                "write one batch per date, or dates that share their days of the month",
            )
        rule = _replace(rule, bymonth=tuple(months), bymonthday=tuple(days))
    return rule


def to_cron(rule: CalendarRule, start: datetime) -> str:
    """The 6-field cron expression (seconds first) that fires when ``rule`` does.

    ``start`` is the job's start_date as a wall-clock time in the job's time zone; fields the
    rule leaves out are taken from it. Raises Unconvertible.
    """
    freq, n = rule.freq, rule.interval
    if n > 1 and freq in ("YEARLY", "WEEKLY", "DAILY"):
        unit = {"YEARLY": "years", "WEEKLY": "weeks", "DAILY": "days"}[freq]
        raise Unconvertible(
            f"INTERVAL={n} with FREQ={freq} counts every {n} {unit} from the start date across "
            "month and year boundaries; cron fields restart every month or year",
            "use FREQ=MONTHLY with BYMONTHDAY or BYDAY dates, or run every "
            f"{unit[:-1]} and let the first step end the run on the others",
        )
    days_given = bool(rule.bymonthday or rule.byday)
    if rule.bymonthday and rule.byday:
        raise Unconvertible(
            "the rule needs a day of the month AND a weekday (e.g. Friday the 13th); cron "
            "fires on a day of the month OR a weekday when both are restricted",
            "schedule the weekday with cron and let the first step end the run on other days",
        )
    second = _field(rule, "SECONDLY", rule.bysecond, start.second, 0, 59)
    minute = _field(rule, "MINUTELY", rule.byminute, start.minute, 0, 59)
    hour = _field(rule, "HOURLY", rule.byhour, start.hour, 0, 23)
    months: list[int] | None
    if freq == "MONTHLY":
        months = _phase(n, start.month - 1, 12, "MONTHLY")
        months = [m + 1 for m in months if not rule.bymonth or m + 1 in rule.bymonth]
    elif freq == "YEARLY" and not rule.bymonth and not days_given:
        months = [start.month]
    else:
        months = sorted(rule.bymonth) or None
    weekdays: list[str] = []
    monthdays: list[str] = []
    if rule.byday:
        weekdays = _weekdays(rule)
    elif rule.bymonthday:
        monthdays = _monthdays(rule.bymonthday, months)
    elif freq in ("YEARLY", "MONTHLY"):
        monthdays = [str(start.day)]
    elif freq == "WEEKLY":
        weekdays = [str((start.weekday() + 1) % 7)]
    if months == []:
        raise Unconvertible(
            "INTERVAL and BYMONTH leave no month to run in", "check the expression's months"
        )
    expression = " ".join(
        [
            _list(second, 0, 59),
            _list(minute, 0, 59),
            _list(hour, 0, 23),
            ",".join(monthdays) or "*",
            _list(months, 1, 12),
            ",".join(weekdays) or "*",
        ]
    )
    try:
        CronSchedule.parse(expression, "UTC")
    except CronError as exc:
        raise Unconvertible(
            f"the cron expression {expression!r} is not accepted by Stepline's cron: {exc}",
            "write the schedule as a cron expression by hand",
        ) from None
    return expression


def rrule_fire_times(
    rule: CalendarRule, start: datetime, timezone: str, after: datetime, count: int
) -> list[datetime]:
    """The next ``count`` fire times of ``rule`` after the aware ``after``, by dateutil.rrule.

    ``start`` is the naive wall-clock start_date in ``timezone``; results are aware, in
    ``timezone``. This evaluator shares no code with :func:`to_cron`.
    """
    zone = ZoneInfo(timezone)
    weekdays = [du.weekday(day, n) if n else du.weekday(day) for n, day in rule.byday]
    recurrence = du.rrule(
        getattr(du, rule.freq),
        dtstart=start.replace(tzinfo=None),
        interval=rule.interval,
        bymonth=rule.bymonth or None,
        bymonthday=rule.bymonthday or None,
        byweekday=weekdays or None,
        byhour=rule.byhour or None,
        byminute=rule.byminute or None,
        bysecond=rule.bysecond or None,
    )
    local_after = after.astimezone(zone).replace(tzinfo=None)
    found: list[datetime] = []
    for naive in _occurrences(recurrence, local_after - timedelta(hours=3)):
        aware = naive.replace(tzinfo=zone)
        if aware > after:
            found.append(aware)
            if len(found) == count:
                break
    return found


def _occurrences(recurrence: du.rrule, after: datetime) -> Iterator[datetime]:
    yield from recurrence.xafter(after)


# -- conversion helpers --------------------------------------------------------------------


def _field(
    rule: CalendarRule, unit: str, given: Sequence[int], origin: int, low: int, high: int
) -> list[int] | None:
    """Values of a time field; None for every value ('*')."""
    size = high - low + 1
    if rule.freq == unit:
        values = _phase(rule.interval, origin, size, unit)
        return [v for v in values if not given or v in given] if given else values
    if rule.rank > FREQUENCIES.index(unit):  # a finer frequency: the field is free
        return sorted(given) if given else None
    return sorted(given) if given else [origin]


def _phase(interval: int, origin: int, size: int, freq: str) -> list[int]:
    if size % interval:
        unit = {"SECONDLY": "minute", "MINUTELY": "hour", "HOURLY": "day", "MONTHLY": "year"}
        raise Unconvertible(
            f"INTERVAL={interval} with FREQ={freq} does not divide a {unit.get(freq, 'cycle')} "
            f"({size}), so its fire times drift against cron's fields",
            f"use an INTERVAL that divides {size}, or list the values explicitly",
        )
    return [v for v in range(size) if (v - origin) % interval == 0]


def _monthdays(days: Sequence[int], months: Sequence[int] | None) -> list[str]:
    out: list[str] = []
    for day in sorted(set(days)):
        if day > 0:
            out.append(str(day))
        elif day == -1:
            out.append("L")
        else:
            lengths = {_MONTH_DAYS.get(m) for m in months} if months else {None}
            if None in lengths or len(lengths) != 1:
                raise Unconvertible(
                    f"BYMONTHDAY={day} counts from the end of months of different lengths",
                    "use -1 (the last day, cron's L), or restrict BYMONTH to months of one "
                    "length other than February",
                )
            length = lengths.pop()
            assert length is not None
            out.append(str(length + day + 1))
    return out


def _weekdays(rule: CalendarRule) -> list[str]:
    ordinals = {ordinal is not None for ordinal, _ in rule.byday}
    if ordinals == {False}:
        return [str((day + 1) % 7) for _, day in sorted(rule.byday, key=lambda d: d[1])]
    if len(ordinals) > 1:
        raise Unconvertible(
            "BYDAY mixes plain weekdays with numbered ones (e.g. MON,2TUE)",
            "write one batch for each kind",
        )
    if rule.freq != "MONTHLY" and not (rule.freq == "YEARLY" and rule.bymonth):
        raise Unconvertible(
            f"numbered weekdays with FREQ={rule.freq} count within the "
            + ("year" if rule.freq == "YEARLY" else "period")
            + "; cron's numbered weekdays count within the month",
            "use FREQ=MONTHLY (with BYMONTH for particular months)",
        )
    out: list[str] = []
    for ordinal, day in rule.byday:
        dow = (day + 1) % 7
        assert ordinal is not None
        if 1 <= ordinal <= 5:
            out.append(f"{dow}#{ordinal}")
        elif ordinal == -1:
            out.append(f"L{dow}")
        else:
            raise Unconvertible(
                f"BYDAY={ordinal}{_DAYS[day]} counts weekdays from the end of the month",
                "cron has the last weekday of a month (-1) and the 1st to 5th; use those",
            )
    return out


def _list(values: Sequence[int] | None, low: int, high: int) -> str:
    if values is None or list(values) == list(range(low, high + 1)):
        return "*"
    values = sorted(values)
    if len(values) >= 3:
        step = values[1] - values[0]
        if all(b - a == step for a, b in itertools.pairwise(values)) and values[-1] + step > high:
            return f"{values[0]}-{high}/{step}" if values[0] else f"*/{step}"
    return ",".join(str(v) for v in values)


# -- parsing helpers -----------------------------------------------------------------------


def _items(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _number(value: str, key: str, low: int, high: int, *, nonzero: bool = False) -> int:
    if not re.fullmatch(r"[+-]?\d+", value) or not low <= int(value) <= high:
        raise Unconvertible(f"{key}={value} is not a number from {low} to {high}", "fix it")
    if nonzero and int(value) == 0:
        raise Unconvertible(f"{key}=0 is not a valid value", "fix it")
    return int(value)


def _month(value: str) -> int:
    if value.isalpha() and value[:3] in _MONTHS:  # JAN or JANUARY
        return _MONTHS.index(value[:3]) + 1
    return _number(value, "BYMONTH", 1, 12)


def _weekday(value: str) -> tuple[int | None, int]:
    match = re.fullmatch(r"([+-]?\d+)?\s*([A-Z]+)", value)
    if not match or match.group(2)[:3] not in _DAYS:
        raise Unconvertible(f"BYDAY={value} is not a weekday such as MON, 2TUE or -1FRI", "fix it")
    ordinal = int(match.group(1)) if match.group(1) else None
    if ordinal == 0:
        raise Unconvertible(f"BYDAY={value}: 0 is not an ordinal", "fix it")
    return ordinal, _DAYS.index(match.group(2)[:3])


def _bydate(value: str) -> tuple[int, int]:
    if not re.fullmatch(r"\d{4}", value):
        raise Unconvertible(
            f"BYDATE={value} names a year or a span (only MMDD dates repeat every year)",
            "write a cron for the dates by hand, or run the job once with `stepline run`",
        )
    month, day = int(value[:2]), int(value[2:])
    if not 1 <= month <= 12 or not 1 <= day <= 31:
        raise Unconvertible(f"BYDATE={value} is not a date (MMDD)", "fix it")
    return month, day


def _replace(rule: CalendarRule, **changes: object) -> CalendarRule:
    from dataclasses import replace

    return replace(rule, **changes)  # type: ignore[arg-type]
