"""CPU cost of one scheduler tick's fire-time lookup, far from and next to DST changes.

    python bench/cron.py [--ticks 200]

A scheduler tick asks ``fire_times_between(last, now)`` for each batch, one second apart. The
figures are CPU milliseconds per tick (process time), for schedules that fire every second,
every minute and once a day, in America/New_York at a quiet time, in the hour before the
autumn change, inside both passes of the repeated hour, and across the spring gap.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

from stepline.scheduling.cron import CronSchedule

ZONE = "America/New_York"
MOMENTS = {
    "quiet (May)": datetime(2026, 5, 1, 12, tzinfo=UTC),
    "hour before fall-back": datetime(2026, 11, 1, 5, 0, 30, tzinfo=UTC),
    "first pass of repeated hour": datetime(2026, 11, 1, 5, 30, tzinfo=UTC),
    "second pass of repeated hour": datetime(2026, 11, 1, 6, 30, tzinfo=UTC),
    "across spring gap": datetime(2026, 3, 8, 6, 59, 30, tzinfo=UTC),
}
EXPRESSIONS = ("* * * * * *", "* * * * *", "30 1 * * *")


def per_tick_ms(expression: str, start: datetime, ticks: int) -> float:
    schedule = CronSchedule.parse(expression, ZONE)
    now = start
    began = time.process_time()
    for _ in range(ticks):
        last, now = now, now + timedelta(seconds=1)
        list(schedule.fire_times_between(last, now))
    return (time.process_time() - began) / ticks * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ticks", type=int, default=200)
    args = parser.parse_args()
    print(f"CPU ms per scheduler tick ({args.ticks} ticks, {ZONE})")
    print(f"{'moment':32}" + "".join(f"{e:>16}" for e in EXPRESSIONS))
    for label, start in MOMENTS.items():
        cells = "".join(f"{per_tick_ms(e, start, args.ticks):16.3f}" for e in EXPRESSIONS)
        print(f"{label:32}{cells}")


if __name__ == "__main__":
    main()
