"""Backfill: the instances of a batch's cron fire times in a past date range.

Each fire time gets the instance it would have got from the scheduler (``scheduled_for``
set, ``{{ scheduled_for }}`` params resolved), unless it already has one: the fire time's
row in the store makes a second instance impossible, so a backfill run twice, or over a
range the scheduler already covered, creates nothing new. The instances are queued,
oldest first, and ``serve`` admits them under the batch's ``max_active_instances``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from stepline.errors import Conflict, Paused, SteplineError
from stepline.scheduling.cron import CronSchedule

if TYPE_CHECKING:
    from stepline.service import Stepline

MAX_FIRE_TIMES = 10_000


class BackfillError(SteplineError):
    """The range or the batch does not allow a backfill (the message says why)."""


@dataclass(frozen=True)
class BackfillEntry:
    scheduled_for: datetime
    instance_id: int | None
    state: str
    """``created``, ``exists`` (an instance has it), ``purged`` (it ran, its instance was
    purged) or, for a dry run, ``would create``."""


def fire_times(cron: str, timezone: str, start: date, end: date, now: datetime) -> list[datetime]:
    """Fire times from ``start`` 00:00 to the end of ``end`` (both in ``timezone``), up to
    ``now``; future fire times belong to the scheduler."""
    if end < start:
        raise BackfillError(f"--to {end} is before --from {start}")
    zone = ZoneInfo(timezone)
    try:
        first = datetime.combine(start, time(0), zone).astimezone(UTC) - timedelta(microseconds=1)
        last = datetime.combine(end + timedelta(days=1), time(0), zone).astimezone(UTC)
        last = min(last - timedelta(microseconds=1), now)
        if last <= first:
            return []
        times: list[datetime] = []
        for fire in CronSchedule.parse(cron, timezone).fire_times_between(first, last):
            times.append(fire)
            if len(times) > MAX_FIRE_TIMES:
                raise BackfillError(
                    f"the range has more than {MAX_FIRE_TIMES} fire times; backfill it in parts"
                )
    except OverflowError:  # a day and a time zone away from year 1 or 9999
        raise BackfillError(
            f"{start}..{end} reaches the edge of the calendar; use dates from 0001-01-02 "
            "to 9999-12-30"
        ) from None
    return times


def backfill(
    service: Stepline,
    batch: str,
    start: date,
    end: date,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[BackfillEntry]:
    """Create (or with ``dry_run`` only list) the instances of the fire times in the range."""
    stored = service.store.definition(batch)
    definition = stored.definition
    if not definition.cron:
        raise BackfillError(f"batch {batch!r} has no cron schedule, so it has no fire times")
    if stored.paused and not dry_run:
        raise Paused(f"batch {batch!r} is paused; resume it before a backfill")
    timezone = definition.timezone or service.settings.timezone
    times = fire_times(definition.cron, timezone, start, end, now or datetime.now(UTC))
    taken = service.store.fire_times_taken(stored.id, times)
    entries: list[BackfillEntry] = []
    for fire in times:
        if fire in taken:
            instance_id = taken[fire]
            entries.append(
                BackfillEntry(fire, instance_id, "exists" if instance_id is not None else "purged")
            )
        elif dry_run:
            entries.append(BackfillEntry(fire, None, "would create"))
        else:
            try:
                instance, created = service.trigger(batch, {}, "backfill", scheduled_for=fire)
            except Paused:
                raise
            except Conflict:  # purged between our look and the insert
                entries.append(BackfillEntry(fire, None, "purged"))
                continue
            entries.append(BackfillEntry(fire, instance.id, "created" if created else "exists"))
    if not dry_run and any(e.state == "created" for e in entries):
        service.wake()
    return entries
