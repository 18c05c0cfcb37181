"""Calendaring expressions -> cron, cross-checked with dateutil.rrule over two years.

The expressions are the examples of the calendaring-syntax section of Oracle's DBMS_SCHEDULER
reference ("Run every Friday", "Run on the second Wednesday of each month", ...), plus the
seed's job and the other forms the converter supports. Each convertible one must fire at
exactly the same instants by our cron (stepline.scheduling.cron) and by dateutil.rrule, an
independent implementation of RFC 5545's RRULE, which Oracle's syntax follows; each other
one must be refused with its reason.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from stepline.oracle.calendar import Unconvertible, parse_calendar, rrule_fire_times, to_cron
from stepline.scheduling.cron import CronSchedule

# (expression, expected cron or None if refused, refusal fragment)
ORACLE_REFERENCE_EXAMPLES = [
    ("FREQ=DAILY; BYDAY=FRI;", "15 30 9 * * 5", None),  # Run every Friday (3 equivalent forms)
    ("FREQ=WEEKLY; BYDAY=FRI;", "15 30 9 * * 5", None),
    ("FREQ=YEARLY; BYDAY=FRI;", "15 30 9 * * 5", None),
    ("FREQ=WEEKLY; INTERVAL=2; BYDAY=FRI;", None, "INTERVAL=2 with FREQ=WEEKLY"),  # other Fri
    ("FREQ=MONTHLY; BYMONTHDAY=-1;", "15 30 9 L * *", None),  # last day of every month
    ("FREQ=MONTHLY; BYMONTHDAY=-2;", None, "months of different lengths"),  # next to last
    ("FREQ=YEARLY; BYMONTH=MAR; BYMONTHDAY=10;", "15 30 9 10 3 *", None),  # March 10th
    ("FREQ=YEARLY; BYDATE=0310;", "15 30 9 10 3 *", None),
    ("FREQ=DAILY; INTERVAL=10;", None, "INTERVAL=10 with FREQ=DAILY"),  # every 10 days
    ("FREQ=DAILY; BYHOUR=16,17,18;", "15 30 16,17,18 * * *", None),  # daily at 4, 5, 6 PM
    ("FREQ=MONTHLY; INTERVAL=2; BYMONTHDAY=15;", "15 30 9 15 1-12/2 *", None),  # every other
    ("FREQ=MONTHLY; BYMONTHDAY=29;", "15 30 9 29 * *", None),  # the 29th of every month
    ("FREQ=MONTHLY; BYDAY=2WED;", "15 30 9 * * 3#2", None),  # second Wednesday
    ("FREQ=YEARLY; BYDAY=-1FRI;", None, "count within the year"),  # last Friday of the year
    ("FREQ=HOURLY; INTERVAL=50;", None, "does not divide a day"),  # every 50 hours
    ("FREQ=MONTHLY; INTERVAL=2; BYMONTHDAY=-1;", "15 30 9 L 1-12/2 *", None),
    ("FREQ=HOURLY; BYMONTHDAY=1,2,3;", "15 30 * 1,2,3 * *", None),  # hourly, first 3 days
    ("FREQ=MONTHLY; BYDAY=MON,TUE,WED,THU,FRI; BYSETPOS=-1", None, "BYSETPOS"),  # last workday
    (
        "FREQ=MONTHLY; BYDAY=MON,TUE,WED,THU,FRI; EXCLUDE=Company_Holidays; BYSETPOS=-1",
        None,
        "EXCLUDE",
    ),
    ("FREQ=YEARLY;BYDAY=FRI;BYHOUR=12;INCLUDE=Company_Holidays", None, "INCLUDE"),
    ("JUL4,MEM,LAB", None, "not a calendaring expression"),  # three named holidays
    ("FREQ=YEARLY;BYWEEKNO=1;BYDAY=MON", None, "BYWEEKNO"),
    ("FREQ=YEARLY;BYYEARDAY=100", None, "BYYEARDAY"),
]
MORE = [
    ("FREQ=WEEKLY;BYDAY=MON;BYHOUR=2;BYMINUTE=0;BYSECOND=0", "0 0 2 * * 1", None),  # the seed
    ("FREQ=MONTHLY;BYDAY=-1FRI;BYHOUR=23;BYMINUTE=0;BYSECOND=0", "0 0 23 * * L5", None),
    ("FREQ=MONTHLY;BYDAY=1MON,3MON", "15 30 9 * * 1#1,1#3", None),
    ("FREQ=YEARLY;BYMONTH=JUN,DEC;BYDAY=-1SUN", "15 30 9 * 6,12 L0", None),
    ("FREQ=MINUTELY;INTERVAL=15;BYHOUR=8,9", "15 */15 8,9 * * *", None),
    ("FREQ=HOURLY;INTERVAL=6", "15 30 3-23/6 * * *", None),
    ("freq=secondly;interval=20;byhour=6;byminute=0,1", "15-59/20 0,1 6 * * *", None),
    ("FREQ=YEARLY;BYMONTH=APR,JUN,SEP,NOV;BYMONTHDAY=-2", "15 30 9 29 4,6,9,11 *", None),
    ("FREQ=DAILY;BYMONTH=1,7;BYDAY=SAT,SUN;BYHOUR=0", "15 30 0 * 1,7 6,0", None),
    ("FREQ=MONTHLY", "15 30 9 1 * *", None),  # everything from the start date
    ("FREQ=YEARLY", "15 30 9 1 1 *", None),
    ("FREQ=MONTHLY;BYDAY=FRI;BYMONTHDAY=13", None, "day of the month AND a weekday"),
    ("FREQ=MONTHLY;BYDAY=-2MON", None, "from the end of the month"),
    ("FREQ=MONTHLY;BYDAY=MON,2TUE", None, "mixes plain weekdays"),
    ("FREQ=MINUTELY;INTERVAL=7", None, "does not divide a hour"),
    ("FREQ=YEARLY;INTERVAL=2", None, "INTERVAL=2 with FREQ=YEARLY"),
    ("FREQ=YEARLY;BYDATE=0310,0415", None, "do not form a grid"),
    ("FREQ=FISCAL_WEEKS", None, "names a schedule"),
    ("SYSDATE + 1", None, "not a calendaring expression"),
    ("FREQ=DAILY;BYHOUR=25", None, "BYHOUR=25"),
]
# Monday 2024-01-01 09:30:15 wall time: fields a rule leaves out come from here.
START = datetime(2024, 1, 1, 9, 30, 15)
TWO_YEARS = timedelta(days=731)


@pytest.mark.parametrize(("expression", "cron", "refusal"), ORACLE_REFERENCE_EXAMPLES + MORE)
@pytest.mark.parametrize("timezone", ["Asia/Seoul", "Europe/Berlin"])
def test_each_example_converts_exactly_or_is_refused(
    expression: str, cron: str | None, refusal: str | None, timezone: str
) -> None:
    if cron is None:
        with pytest.raises(Unconvertible) as caught:
            to_cron(parse_calendar(expression), START)
        assert refusal is not None and refusal in str(caught.value)
        assert caught.value.instead  # every refusal says what to write instead
        return
    rule = parse_calendar(expression)
    assert to_cron(rule, START) == cron
    frequent = rule.freq in ("MINUTELY", "SECONDLY")
    window = timedelta(days=21) if frequent else TWO_YEARS
    zone = ZoneInfo(timezone)
    begin = START.replace(tzinfo=zone)
    ours = list(CronSchedule.parse(cron, timezone).fire_times_between(begin, begin + window))
    theirs = rrule_fire_times(rule, START, timezone, begin, len(ours) + 1)
    theirs = [t for t in theirs if t <= begin + window]
    assert ours, "the rule never fires in the window"
    # On the two days a year whose clocks jump, cron (crontab(8) rules, see cron.py) and
    # RFC 5545 place times in the gap or the repeated hour differently: compared elsewhere.
    ours, theirs = _off_transition_days(ours, zone), _off_transition_days(theirs, zone)
    assert [t.astimezone(UTC) for t in ours] == [t.astimezone(UTC) for t in theirs]


def _off_transition_days(times: list[datetime], zone: ZoneInfo) -> list[datetime]:
    def transition(moment: datetime) -> bool:
        day = moment.astimezone(zone).replace(hour=0, minute=0, second=0, tzinfo=None)
        return (
            day.replace(tzinfo=zone).utcoffset()
            != (day + timedelta(hours=23, minutes=59)).replace(tzinfo=zone).utcoffset()
        )

    return [t for t in times if not transition(t)]


def test_the_seed_job_is_mondays_at_two_in_seoul() -> None:
    rule = parse_calendar("FREQ=WEEKLY;BYDAY=MON;BYHOUR=2;BYMINUTE=0;BYSECOND=0")
    cron = to_cron(rule, datetime(2020, 3, 2, 2, 0))
    after = datetime(2026, 12, 1, tzinfo=UTC)
    fires = CronSchedule.parse(cron, "Asia/Seoul").fire_times(after, 3)
    assert [f.astimezone(ZoneInfo("Asia/Seoul")).isoformat() for f in fires] == [
        "2026-12-07T02:00:00+09:00",
        "2026-12-14T02:00:00+09:00",
        "2026-12-21T02:00:00+09:00",
    ]
    assert rrule_fire_times(rule, datetime(2020, 3, 2, 2, 0), "Asia/Seoul", after, 3) == fires


def test_a_dst_gap_is_where_the_two_evaluators_disagree() -> None:
    """What the report's flag is for: 02:30 does not exist on 2026-03-29 in Berlin."""
    rule = parse_calendar("FREQ=DAILY;BYHOUR=2;BYMINUTE=30;BYSECOND=0")
    cron = to_cron(rule, START)
    after = datetime(2026, 3, 27, tzinfo=UTC)
    ours = CronSchedule.parse(cron, "Europe/Berlin").fire_times(after, 4)
    theirs = rrule_fire_times(rule, START, "Europe/Berlin", after, 4)
    assert ours[0] == theirs[0] and ours[1] == theirs[1]
    assert ours[2] != theirs[2]  # the gap day: cron runs right after the gap
