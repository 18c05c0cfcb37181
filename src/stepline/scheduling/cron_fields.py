"""Cron fields as crontab(5) defines them: which wall-clock dates and times an expression matches.

This module knows nothing about time zones: it answers "which is the first matching wall time
at or after this one" for naive datetimes. :mod:`stepline.scheduling.cron` maps wall times to
instants and owns the daylight-saving rules.
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

__all__ = ["ALIASES", "CronFields", "CronSyntaxError", "parse_fields"]

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
EXPECTED_FIELDS = (
    "expected 5 fields (minute hour day month weekday) "
    "or 6 with leading seconds (second minute hour day month weekday)"
)
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# The Gregorian calendar repeats every 400 years: a day pattern with no match in that span
# never matches.
_CYCLE = timedelta(days=146097)
_NTH = re.compile(r"^(\w+)#(\w+)$")
_LAST_OF = re.compile(r"^(?:L(\w+)|(\w+)L)$")
_LAST_MINUS = re.compile(r"^L-(\d+)$")
_NEAREST = re.compile(r"^(\d+)W$")


class CronSyntaxError(ValueError):
    """What is wrong with an expression, without the expression itself (the caller adds it)."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    first_name: int = 0  # the value of names[0]

    def value(self, token: str) -> int:
        upper = token.upper()
        if upper in self.names:
            return self.names.index(upper) + self.first_name
        if not (token.isascii() and token.isdigit()):
            spelled = f" or a name ({self.names[0]}-{self.names[-1]})" if self.names else ""
            raise CronSyntaxError(f'{self.name} "{token}" is not a number{spelled}')
        number = int(token)
        if not self.low <= number <= self.high:
            raise CronSyntaxError(f'{self.name} "{token}" is out of range {self.low}-{self.high}')
        return number

    def values(self, term: str) -> set[int]:
        """One list item: ``*``, ``N``, ``N-M``, each optionally ``/STEP``; also ``N/STEP``."""
        base, slash, step_text = term.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0:
                raise CronSyntaxError(
                    f'{self.name} "{term}": the step after "/" must be a whole number >= 1'
                )
            step = int(step_text)
        if base == "*":
            low, high = self.low, self.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = self.value(first), self.value(last)
            if low > high:
                raise CronSyntaxError(
                    f'{self.name} range "{base}" runs backwards; write it as two ranges, '
                    f'e.g. "{first}-{self.high},{self.low}-{last}"'
                )
        else:
            low = self.value(base)
            high = self.high if slash else low
        return set(range(low, high + 1, step))


_SECOND = _Field("second", 0, 59)
_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DAY = _Field("day-of-month", 1, 31)
_MONTH = _Field("month", 1, 12, _MONTHS, 1)
_WEEKDAY = _Field("day-of-week", 0, 7, _WEEKDAYS, 0)


@dataclass(frozen=True)
class CronFields:
    """The sets an expression allows, and how its two day fields combine."""

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: frozenset[int]
    days: frozenset[int]  # day-of-month numbers
    days_before_last: frozenset[int]  # L is 0, L-2 is 2
    last_weekday: bool  # LW
    nearest_weekday: frozenset[int]  # 15W
    weekdays: frozenset[int]  # 0 = Sunday ... 6 = Saturday
    nth_weekdays: frozenset[tuple[int, int]]  # 5#2 is (5, 2)
    last_weekdays: frozenset[int]  # 5L and L5 are 5
    days_or: bool  # both day fields restricted: a day matches if either matches

    @property
    def more_often_than_hourly(self) -> bool:
        """Fires more than once in an hour it fires in: several (second, minute) pairs."""
        return len(self.seconds) * len(self.minutes) > 1

    @property
    def every_hour(self) -> bool:
        """The hour field allows all 24 hours."""
        return len(self.hours) == 24

    @property
    def interval(self) -> bool:
        """Runs at intervals rather than at fixed times of day (see the DST rules in cron.py)."""
        return self.more_often_than_hourly or self.every_hour

    def next_wall(self, cursor: datetime) -> datetime | None:
        """The first matching wall time at or after the naive ``cursor``; None if none."""
        if cursor.microsecond:
            cursor = cursor.replace(microsecond=0) + timedelta(seconds=1)
        today = cursor.date()
        day = self.next_day(today)
        if day == today:
            at = self._time_from(cursor.hour, cursor.minute, cursor.second)
            if at is not None:
                return datetime.combine(day, at)
            day = self.next_day(today + timedelta(days=1)) if today < date.max else None
        if day is None:
            return None
        return datetime.combine(day, time(self.hours[0], self.minutes[0], self.seconds[0]))

    def next_day(self, day: date) -> date | None:
        """The first matching date at or after ``day``; None if none within 400 years."""
        try:
            limit = day + _CYCLE
        except OverflowError:
            limit = date.max
        while day <= limit:
            if day.month not in self.months:
                if day.year == date.max.year and day.month == 12:
                    return None
                day = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
            elif self.matches_day(day):
                return day
            elif day == date.max:
                return None
            else:
                day += timedelta(days=1)
        return None

    def matches_day(self, day: date) -> bool:
        if self.days_or:
            return self._matches_day_of_month(day) or self._matches_day_of_week(day)
        return self._matches_day_of_month(day) and self._matches_day_of_week(day)

    def _matches_day_of_month(self, day: date) -> bool:
        if day.day in self.days:
            return True
        if not (self.days_before_last or self.last_weekday or self.nearest_weekday):
            return False
        last = calendar.monthrange(day.year, day.month)[1]
        if last - day.day in self.days_before_last:
            return True
        if self.last_weekday and day.day == _nearest_weekday(day.replace(day=last), last):
            return True
        return any(
            n <= last and day.day == _nearest_weekday(day.replace(day=n), last)
            for n in self.nearest_weekday
        )

    def _matches_day_of_week(self, day: date) -> bool:
        weekday = day.isoweekday() % 7
        if weekday in self.weekdays:
            return True
        if (weekday, (day.day - 1) // 7 + 1) in self.nth_weekdays:
            return True
        return weekday in self.last_weekdays and (
            day.day + 7 > calendar.monthrange(day.year, day.month)[1]
        )

    def _time_from(self, hour: int, minute: int, second: int) -> time | None:
        hours, minutes, seconds = self.hours, self.minutes, self.seconds
        h = bisect_left(hours, hour)
        if h < len(hours) and hours[h] == hour:
            m = bisect_left(minutes, minute)
            if m < len(minutes) and minutes[m] == minute:
                s = bisect_left(seconds, second)
                if s < len(seconds):
                    return time(hour, minute, seconds[s])
                m += 1
            if m < len(minutes):
                return time(hour, minutes[m], seconds[0])
            h += 1
        if h < len(hours):
            return time(hours[h], minutes[0], seconds[0])
        return None


def _nearest_weekday(target: date, last: int) -> int:
    """The weekday nearest ``target`` within its month (Quartz ``W``)."""
    weekday = target.weekday()  # Monday = 0
    if weekday == 5:  # Saturday: the Friday before, or the Monday after the 1st
        return target.day - 1 if target.day > 1 else target.day + 2
    if weekday == 6:  # Sunday: the Monday after, or the Friday before the last day
        return target.day + 1 if target.day < last else target.day - 2
    return target.day


def parse_fields(expression: str) -> CronFields:
    """Parse a 5-field or seconds-first 6-field expression, or an ``@`` alias."""
    if expression.startswith("@"):
        alias = expression.lower()
        if alias == "@reboot":
            raise CronSyntaxError(
                '"@reboot" has no fire times; run the batch with "stepline run" instead'
            )
        if alias not in ALIASES:
            raise CronSyntaxError(
                f'unknown alias "{expression}"; expected one of {", ".join(ALIASES)}'
            )
        expression = ALIASES[alias]
    parts = expression.split()
    if len(parts) not in (5, 6):
        year = " (a 7th year field, as in Quartz, is not supported)" if len(parts) == 7 else ""
        raise CronSyntaxError(f"it has {len(parts)} fields{year}; {EXPECTED_FIELDS}")
    seconds = _plain(_SECOND, parts.pop(0)) if len(parts) == 6 else {0}
    minute, hour, day, month, weekday = parts
    minutes, hours = _plain(_MINUTE, minute), _plain(_HOUR, hour)
    dom = _DayOfMonth.parse(day)
    months = _plain(_MONTH, month)
    dow = _DayOfWeek.parse(weekday)
    return CronFields(
        seconds=tuple(sorted(seconds)),
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        months=frozenset(months),
        days=frozenset(dom.days),
        days_before_last=frozenset(dom.days_before_last),
        last_weekday=dom.last_weekday,
        nearest_weekday=frozenset(dom.nearest),
        weekdays=frozenset(value % 7 for value in dow.weekdays),
        nth_weekdays=frozenset(dow.nth),
        last_weekdays=frozenset(dow.last),
        # crontab(5): a day field is restricted unless it starts with "*" ("?" is Quartz's "*").
        days_or=_restricted(day) and _restricted(weekday),
    )


def _restricted(field: str) -> bool:
    return not field.startswith(("*", "?"))


def _terms(field: _Field, text: str) -> list[str]:
    terms = text.split(",")
    if "" in terms:
        raise CronSyntaxError(f'{field.name} "{text}" has an empty list item')
    return terms


def _plain(field: _Field, text: str) -> set[int]:
    if "?" in text:
        raise CronSyntaxError(
            f'{field.name} "{text}": "?" is allowed only in day-of-month and day-of-week'
        )
    values: set[int] = set()
    for term in _terms(field, text):
        values |= field.values(term)
    return values


class _DayOfMonth:
    def __init__(self) -> None:
        self.days: set[int] = set()
        self.days_before_last: set[int] = set()
        self.last_weekday = False
        self.nearest: set[int] = set()

    @classmethod
    def parse(cls, text: str) -> _DayOfMonth:
        parsed = cls()
        if text == "?":
            text = "*"
        for term in _terms(_DAY, text):
            upper = term.upper()
            if upper == "L":
                parsed.days_before_last.add(0)
            elif upper == "LW":
                parsed.last_weekday = True
            elif match := _LAST_MINUS.match(upper):
                offset = int(match[1])
                if offset > 30:
                    raise CronSyntaxError(f'day-of-month "{term}": the offset must be 0-30')
                parsed.days_before_last.add(offset)
            elif match := _NEAREST.match(upper):
                parsed.nearest.add(_DAY.value(match[1]))
            elif "W" in upper or "L" in upper:
                raise CronSyntaxError(
                    f'day-of-month "{term}" is not supported; the supported forms are '
                    '"L" (last day), "L-2" (2 days before the last), "LW" (last weekday) '
                    'and "15W" (the weekday nearest the 15th)'
                )
            else:
                parsed.days |= _DAY.values(term)
        return parsed


class _DayOfWeek:
    def __init__(self) -> None:
        self.weekdays: set[int] = set()
        self.nth: set[tuple[int, int]] = set()
        self.last: set[int] = set()

    @classmethod
    def parse(cls, text: str) -> _DayOfWeek:
        parsed = cls()
        if text == "?":
            text = "*"
        for term in _terms(_WEEKDAY, text):
            upper = term.upper()
            if upper == "L":
                raise CronSyntaxError(
                    'day-of-week "L" alone (Quartz for Saturday) is not supported; '
                    'write SAT or 6, or "5L" for the last Friday of the month'
                )
            if match := _NTH.match(upper):
                week = match[2]
                if not week.isdigit() or not 1 <= int(week) <= 5:
                    raise CronSyntaxError(f'day-of-week "{term}": the week after "#" must be 1-5')
                parsed.nth.add((_WEEKDAY.value(match[1]) % 7, int(week)))
            elif match := _LAST_OF.match(upper):
                parsed.last.add(_WEEKDAY.value(match[1] or match[2]) % 7)
            else:
                parsed.weekdays |= _WEEKDAY.values(term)
        return parsed
