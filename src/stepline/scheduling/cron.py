"""Cron schedules evaluated in an IANA timezone, with defined daylight-saving behaviour.

Expressions have 5 fields (``minute hour day month weekday``) or 6 with seconds *first*
(``second minute hour day month weekday``, the NestJS/Spring order: ``0 0 2 * * 1`` is
Mondays at 02:00:00). Field syntax is croniter's; ``@daily``-style aliases are not accepted.

Fields are matched against wall-clock time in the schedule's timezone, and every fire time is
returned as an aware UTC datetime. Around daylight-saving transitions:

* Gap (spring forward): a wall time that does not exist fires once, at the first instant
  after the gap. ``30 2 * * *`` in America/New_York fires on 2026-03-08 at 03:00 EDT
  (07:00 UTC). Every missing time in one gap, and a fire time at the gap's end (03:00 here),
  collapse into that single firing: nothing is skipped and nothing fires twice.
* Overlap (fall back): a schedule that names its hours fires a wall time that occurs twice
  once, at its first occurrence (``fold=0``): ``30 1 * * *`` in America/New_York fires on
  2026-11-01 at 01:30 EDT (05:30 UTC) only. A schedule whose hour field is ``*`` runs at
  intervals, so it keeps running through the repeated hour, in both passes (as classic cron
  does): ``0 * * * *`` fires at 05:00, 06:00 and 07:00 UTC that night.

Fire times are therefore strictly increasing UTC instants; none is ever repeated.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

__all__ = ["CronError", "CronSchedule"]

_EXPECTED = (
    "expected 5 fields (minute hour day month weekday) "
    "or 6 with leading seconds (second minute hour day month weekday)"
)
# Any fixed instant works for probing; it only has to precede croniter's search horizon.
_PROBE_START = datetime(2000, 1, 1)
_REWIND = timedelta(hours=3)  # longer than any DST shift


class CronError(ValueError):
    """A cron expression or timezone that cannot be scheduled."""


@dataclass(frozen=True)
class CronSchedule:
    """A validated cron expression bound to an IANA timezone."""

    expression: str
    timezone: str

    def __post_init__(self) -> None:
        # Validating here rather than only in parse() means no invalid instance can exist.
        _check_expression(self.expression)
        _zone(self.timezone)

    @classmethod
    def parse(cls, expression: str, timezone: str) -> CronSchedule:
        """Validate and build a schedule; raises CronError naming what is wrong."""
        if isinstance(expression, str):
            expression = " ".join(expression.split())
        return cls(expression, timezone)

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
        return _iter_fires(self.expression, _zone(self.timezone), after.astimezone(UTC))


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


def _croniter(expression: str, start: datetime) -> croniter[datetime]:
    # croniter reads a 6th field as trailing seconds unless told otherwise.
    seconds_first = len(expression.split()) == 6
    return croniter(expression, start, ret_type=datetime, second_at_beginning=seconds_first)


def _check_expression(expression: object) -> None:
    if not isinstance(expression, str):
        raise CronError(f"invalid cron {expression!r}: not a string; {_EXPECTED}")
    count = len(expression.split())
    if count not in (5, 6):
        raise CronError(f'invalid cron "{expression}": it has {count} fields; {_EXPECTED}')
    try:
        # Parsing alone accepts dates that never occur (e.g. 30 February); one lookup does not.
        _croniter(expression, _PROBE_START).get_next(datetime)
    except CroniterBadDateError as exc:
        raise CronError(f'invalid cron "{expression}": it never matches a real date') from exc
    except (CroniterError, ValueError, KeyError, IndexError) as exc:
        raise CronError(f'invalid cron "{expression}": {exc}; {_EXPECTED}') from exc


def _iter_fires(expression: str, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    # croniter is driven in naive wall time so DST is handled only here; croniter's own
    # aware mode fires a repeated wall time twice even for a fixed-time schedule.
    repeat = _names_no_hour(expression)
    last = after
    second_pass: list[datetime] = []  # overlap wall times still to fire at fold=1
    start = after
    offsets = {(after + k * _REWIND).astimezone(zone).utcoffset() for k in (-1, 0, 1)}
    if repeat and len(offsets) > 1:
        # Near a transition, wall times before ``after``'s own may still owe their second
        # pass: start before the overlap and let ``last`` drop what is already past.
        start = after - _REWIND
    walls = _croniter(expression, start.astimezone(zone).replace(tzinfo=None))
    while True:
        wall = walls.get_next(datetime)
        overlap = repeat and _in_overlap(wall, zone)
        if second_pass and not overlap:
            for earlier in second_pass:
                fire = earlier.replace(tzinfo=zone, fold=1).astimezone(UTC)
                if fire > last:
                    last = fire
                    yield fire
            second_pass.clear()
        if overlap:
            second_pass.append(wall)
        fire = _wall_to_utc(wall, zone)
        # Gap times collapse onto one instant and overlap times map back to their first pass,
        # so several wall times can land on or before an instant already handed out.
        if fire > last:
            last = fire
            yield fire


def _names_no_hour(expression: str) -> bool:
    """An expression whose hour field is ``*`` runs at intervals, not at a time of day."""
    fields = expression.split()
    return fields[2 if len(fields) == 6 else 1] == "*"


def _in_overlap(wall: datetime, zone: ZoneInfo) -> bool:
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    return first.utcoffset() != second.utcoffset() and (
        first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall
    )


def _wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    utc = wall.replace(tzinfo=zone).astimezone(UTC)  # fold=0: first occurrence in an overlap
    if utc.astimezone(zone).replace(tzinfo=None) == wall:
        return utc
    # The wall time is in a gap. With fold=0 zoneinfo applies the pre-gap offset, landing after
    # the transition; fold=1 lands before it. Bisect whole seconds (tzdata transitions are whole
    # seconds) for the first instant carrying the post-gap offset.
    target = utc.astimezone(zone).utcoffset()
    before = int(wall.replace(tzinfo=zone, fold=1).timestamp())
    after = int(utc.timestamp())
    while after - before > 1:
        mid = (before + after) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == target:
            after = mid
        else:
            before = mid
    return datetime.fromtimestamp(after, UTC)
