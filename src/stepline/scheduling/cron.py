"""Cron schedules evaluated in an IANA timezone, with crontab(8)'s daylight-saving behaviour.

Expressions follow crontab(5) (see :mod:`stepline.scheduling.cron_fields` and docs/cron.md):
5 fields (``minute hour day month weekday``), 6 with seconds *first* (the NestJS/Spring order:
``0 0 2 * * 1`` is Mondays at 02:00:00), or an alias such as ``@daily``.

Fields are matched against wall-clock time in the schedule's timezone; every fire time is
returned as an aware UTC datetime. Around daylight-saving transitions:

* Gap (spring forward): wall times that do not exist fire once, at the first instant after
  the gap. ``30 2 * * *`` in America/New_York fires on 2026-03-08 at 03:00 EDT (07:00 UTC).
  All matching wall times of one gap, and a fire time at the gap's end, collapse into that
  single firing: nothing is lost and nothing fires twice.
* Overlap (fall back): a *fixed-time* schedule fires a repeated wall time once, at its first
  occurrence: ``30 1 * * *`` fires on 2026-11-01 at 01:30 EDT (05:30 UTC) only. An
  *interval* schedule keeps its wall-clock pattern through both passes of the repeated hour:
  ``*/15 1-3 * * *`` fires at 01:00, 01:15, 01:30, 01:45 EDT and again at the same wall
  times EST. A schedule is an interval schedule when it fires more than once in an hour (its
  second and minute fields allow more than one time within the hour) or in every hour of the
  day (its hour field allows all 24 hours); every other schedule is fixed-time.

Fire times are therefore strictly increasing UTC instants; none is ever repeated.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from stepline.scheduling.cron_fields import CronFields, CronSyntaxError, parse_fields

__all__ = ["CronError", "CronSchedule"]

_PROBE = date(2000, 1, 1)  # any date: a valid pattern matches within 400 years of any date
_ONE_SECOND = timedelta(seconds=1)


class CronError(ValueError):
    """A cron expression or timezone that cannot be scheduled."""


@dataclass(frozen=True)
class CronSchedule:
    """A validated cron expression bound to an IANA timezone."""

    expression: str
    timezone: str

    def __post_init__(self) -> None:
        # Validating here rather than only in parse() means no invalid instance can exist.
        _fields(self.expression)
        _zone(self.timezone)

    @classmethod
    def parse(cls, expression: str, timezone: str) -> CronSchedule:
        """Validate and build a schedule; raises CronError naming what is wrong."""
        if isinstance(expression, str):
            expression = " ".join(expression.split())
        return cls(expression, timezone)

    @property
    def interval(self) -> bool:
        """Keeps its wall-clock pattern through both passes of a repeated hour."""
        return _fields(self.expression).interval

    def next_fire_time(self, after: datetime) -> datetime:
        """The first fire time strictly after the aware datetime ``after``, in UTC."""
        return next(self._fires(after))

    def fire_times(self, after: datetime, n: int) -> list[datetime]:
        """The next ``n`` fire times strictly after ``after``, in UTC."""
        return list(itertools.islice(self._fires(after), n))

    def fire_times_between(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Fire times in ``(start, end]``, in UTC: the runs missed while nothing was watching."""
        _require_aware(end, "end")
        return itertools.takewhile(lambda fire: fire <= end, self._fires(start))

    def _fires(self, after: datetime) -> Iterator[datetime]:
        # Not a generator itself, so a naive datetime fails at the call, not at first next().
        _require_aware(after, "after")
        fields = _fields(self.expression)
        return _iter_fires(fields, _zone(self.timezone), after.astimezone(UTC))


def _require_aware(value: datetime, name: str) -> None:
    if value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value!r}")


def _zone(name: object) -> ZoneInfo:
    if not isinstance(name, str):
        raise CronError(f"invalid timezone {name!r}: expected an IANA name such as 'Asia/Seoul'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise CronError(
            f"unknown timezone {name!r}: expected an IANA name such as 'Asia/Seoul' or 'UTC'"
        ) from exc


def _fields(expression: object) -> CronFields:
    if not isinstance(expression, str):
        raise CronError(f"invalid cron {expression!r}: not a string")
    return _parse(expression)


@functools.lru_cache(maxsize=512)  # the scheduler re-reads every schedule on every tick
def _parse(expression: str) -> CronFields:
    try:
        fields = parse_fields(expression)
    except CronSyntaxError as exc:
        raise CronError(f'invalid cron "{expression}": {exc}') from None
    if fields.next_day(_PROBE) is None:
        raise CronError(f'invalid cron "{expression}": it never matches a real date')
    return fields


def _iter_fires(fields: CronFields, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    last = after
    cursor = _wall(after, _offset(after.astimezone(zone)))
    first, second = _offsets(cursor, zone)
    if second < first:
        # ``after`` is inside a repeated hour: its walls from the start of that hour may still
        # owe their second pass.
        cursor = _wall(_transition(cursor, zone, first, second), second)
    while (wall := fields.next_wall(cursor)) is not None:
        first, second = _offsets(wall, zone)
        if first == second:
            fire = _instant(wall, first)
            if fire > last:
                last = fire
                yield fire
            cursor = wall + _ONE_SECOND
            continue
        transition = _transition(wall, zone, first, second)
        if second > first:  # a gap: every matching wall in it fires once, right after it
            if transition > last:
                last = transition
                yield transition
            cursor = _wall(transition, second)
            continue
        # An overlap: wall times in [start, end) occur first at ``first``, then at ``second``.
        start, end = _wall(transition, second), _wall(transition, first)
        passes = ((first, wall), (second, start)) if fields.interval else ((first, wall),)
        for offset, begin in passes:
            repeat = fields.next_wall(max(begin, _wall(last, offset)))
            while repeat is not None and repeat < end:
                fire = _instant(repeat, offset)
                if fire > last:
                    last = fire
                    yield fire
                repeat = fields.next_wall(repeat + _ONE_SECOND)
        cursor = end


def _offset(aware: datetime) -> timedelta:
    offset = aware.utcoffset()
    assert offset is not None  # always set: every datetime here carries a ZoneInfo or UTC
    return offset


def _offsets(wall: datetime, zone: ZoneInfo) -> tuple[timedelta, timedelta]:
    """The UTC offsets of a wall time read at fold 0 and fold 1 (equal unless near a change).

    In a gap, fold 0 reads the offset before the change and fold 1 the one after; in an
    overlap, fold 0 is the first pass and fold 1 the second (PEP 495).
    """
    return _offset(wall.replace(tzinfo=zone)), _offset(wall.replace(tzinfo=zone, fold=1))


def _transition(wall: datetime, zone: ZoneInfo, first: timedelta, second: timedelta) -> datetime:
    """The instant the offset changes near a wall time that is in a gap or an overlap."""
    # The two readings of ``wall`` bracket the change; tzdata changes fall on whole seconds.
    before = int(_instant(wall, max(first, second)).timestamp())
    after = int(_instant(wall, min(first, second)).timestamp())
    target = _offset(datetime.fromtimestamp(after, zone))
    while after - before > 1:
        middle = (before + after) // 2
        if _offset(datetime.fromtimestamp(middle, zone)) == target:
            after = middle
        else:
            before = middle
    return datetime.fromtimestamp(after, UTC)


def _instant(wall: datetime, offset: timedelta) -> datetime:
    return (wall - offset).replace(tzinfo=UTC)


def _wall(instant: datetime, offset: timedelta) -> datetime:
    return (instant + offset).replace(tzinfo=None)
