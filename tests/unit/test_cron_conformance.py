"""Conformance of CronSchedule with an independent implementation, Healthchecks' ``cronsim``.

Seeded random expressions in the syntax both implementations accept, five time zones, and start
times next to daylight-saving changes. Day and time matching must agree exactly. The two differ
by design only around DST; every such difference must be one of the documented policy classes
below (docs/cron.md), and any other difference fails the test.

cronsim applies crontab(8)'s fixed-time DST handling by spelling (5-field expressions whose
minute and hour fields do not start with ``*``) and none to 6-field expressions; Stepline
decides by frequency (more than once an hour, or every hour: "interval") and applies the gap
rule to every schedule.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import cronsim

from stepline.scheduling.cron import CronError, CronSchedule

SEED = 20261201
EXPRESSIONS = 2000
FIRES = 6  # compared per case
# Asia/Seoul kept DST in 1987-88 (gap and overlap at 02:00); Lord Howe shifts by 30 minutes.
ZONES = {
    "Asia/Seoul": (1987, 1988),
    "UTC": (2026,),
    "Europe/Berlin": (2026,),
    "America/New_York": (2026,),
    "Australia/Lord_Howe": (2026,),
}

GAP_END = "gap: reference skips the gap's wall times; we fire once right after the gap"
SECOND_PASS_INTERVAL = (
    "overlap: fires more than once an hour or every hour, so we keep both passes; "
    "the reference calls it fixed-time by spelling and fires once"
)
SECOND_PASS_FIXED = (
    "overlap: a fixed-time schedule fires once; the reference repeats it in the second "
    "pass (6-field, or a *-led field)"
)
HALF_HOUR_STEPPING = (
    "reference omits a wall time it matches in the day after a 30-minute shift "
    "(it steps hours from the wrong half hour)"
)
BEFORE_START = "reference returned a time not after the start (naive walk from a second pass)"


def transitions(zone: ZoneInfo, years: tuple[int, ...]) -> list[datetime]:
    """UTC instants at which the zone's offset changes in the given years."""
    found = []
    for year in years:
        t = datetime(year, 1, 1, tzinfo=UTC)
        while t.year == year:
            step = t + timedelta(hours=1)
            if t.astimezone(zone).utcoffset() != step.astimezone(zone).utcoffset():
                low, high = int(t.timestamp()), int(step.timestamp())
                while high - low > 1:
                    middle = (low + high) // 2
                    same = datetime.fromtimestamp(middle, zone).utcoffset() == (
                        t.astimezone(zone).utcoffset()
                    )
                    low, high = (middle, high) if same else (low, middle)
                found.append(datetime.fromtimestamp(high, UTC))
            t = step
    return found


class Generator:
    """Random expressions in the syntax shared by Stepline and cronsim."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, *weighted: tuple[int, Callable[[], str]]) -> str:
        choices = [make for weight, make in weighted for _ in range(weight)]
        return self.rng.choice(choices)()

    def number(self, low: int, high: int, bias: tuple[int, ...] = ()) -> int:
        if bias and self.rng.random() < 0.5:
            return self.rng.choice(bias)
        return self.rng.randint(low, high)

    def plain(self, low: int, high: int, bias: tuple[int, ...] = (), star: int = 3) -> str:
        r = self.rng

        def single() -> str:
            return str(self.number(low, high, bias))

        def span() -> str:
            a = self.number(low, high, bias)
            return f"{a}-{r.randint(a, high)}"

        def item() -> str:
            return self.pick((3, single), (1, span))

        def stepped_span() -> str:
            # cronsim reads "13-13/5" as "13/5"; crontab(5) and Stepline read 13 only.
            a = r.randint(low, high - 1)
            return f"{a}-{r.randint(a + 1, high)}/{r.randint(2, 5)}"

        return self.pick(
            (star, lambda: "*"),
            (2, lambda: f"*/{r.randint(2, (high - low) // 2 + 1)}"),
            (4, single),
            (1, span),
            (1, stepped_span),
            (1, lambda: f"{self.number(low, high, bias)}/{r.randint(2, 20)}"),
            (2, lambda: ",".join(item() for _ in range(r.randint(2, 3)))),
        )

    def day_of_month(self) -> str:
        r = self.rng
        special = self.pick(
            (2, lambda: "L"),
            (1, lambda: "LW"),
            (2, lambda: str(r.randint(1, 31))),
            (1, lambda: str(r.choice((29, 30, 31)))),
        )
        return self.pick(
            (10, lambda: "*"),
            (3, lambda: self.plain(1, 31, (1, 8, 13, 15, 28, 29, 30, 31), star=0)),
            (2, lambda: special),
            (1, lambda: f"{special},{r.randint(1, 28)}"),
        )

    def day_of_week(self) -> str:
        r = self.rng
        names = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")

        def day() -> str:
            return names[r.randint(0, 6)] if r.random() < 0.3 else str(r.randint(0, 7))

        def special() -> str:
            return self.pick(
                (2, lambda: f"{day()}#{r.randint(1, 5)}"),
                (1, lambda: f"{r.randint(0, 7)}L"),
            )

        return self.pick(
            (10, lambda: "*"),
            (4, lambda: self.plain(0, 7, (0, 5, 6, 7), star=0)),
            (1, lambda: f"{names[r.randint(0, 5)]}-{names[6]}"),
            (1, lambda: f"{r.randint(1, 5)}-7"),
            (2, special),
            (1, lambda: f"{day()},{special()}"),
        )

    def expression(self) -> str:
        r = self.rng
        fields = [
            self.plain(0, 59, (0, 15, 30, 45)),
            self.plain(0, 23, (0, 1, 2, 3), star=2),
            self.day_of_month(),
            self.pick((8, lambda: "*"), (3, lambda: self.plain(1, 12, (3, 4, 5, 10, 11), 0))),
            self.day_of_week(),
        ]
        if r.random() < 0.25:
            seconds = self.pick(
                (6, lambda: "0"),
                (2, lambda: str(r.randint(0, 59))),
                (1, lambda: f"*/{r.randint(10, 30)}"),
                (1, lambda: "0,30"),
            )
            fields.insert(0, seconds)
        return " ".join(fields)


@dataclass
class Case:
    expression: str
    zone: ZoneInfo
    start: datetime

    @property
    def six_fields(self) -> bool:
        return len(self.expression.split()) == 6

    def reference(self) -> cronsim.CronSim:
        return cronsim.CronSim(self.expression, self.start.astimezone(self.zone))

    def reference_fixed_time(self) -> bool:
        """cronsim's own rule for applying crontab(8)'s fixed-time DST handling."""
        parts = self.expression.split()
        return len(parts) == 5 and not parts[0].startswith("*") and not parts[1].startswith("*")

    def policy_interval(self) -> bool:
        """docs/cron.md: more than one (second, minute) pair, or all 24 hours."""
        sim = cronsim.CronSim(self.expression, datetime(2000, 1, 1))
        return len(sim.seconds) * len(sim.minutes) > 1 or len(sim.hours) == 24

    def wall_matches(self, wall: datetime) -> bool:
        """The reference's calendar says this naive wall time matches the expression."""
        sim = cronsim.CronSim(self.expression, wall - timedelta(seconds=1))
        return bool(next(sim, None) == wall)

    def gap_has_match(self, fire: datetime) -> bool:
        """``fire`` is the end of a gap in which a wall time matches."""
        before = (fire - timedelta(seconds=1)).astimezone(self.zone).utcoffset()
        after = fire.astimezone(self.zone).utcoffset()
        if before is None or after is None or after <= before:
            return False
        gap_start = (fire + before).replace(tzinfo=None)
        gap_end = (fire + after).replace(tzinfo=None)
        sim = cronsim.CronSim(self.expression, gap_start - timedelta(seconds=1))
        match = next(sim, None)
        return match is not None and match < gap_end

    def second_pass_match(self, fire: datetime) -> bool:
        """``fire`` is the second occurrence of a repeated wall time that matches."""
        local = fire.astimezone(self.zone)
        wall = local.replace(tzinfo=None)
        first = wall.replace(tzinfo=self.zone, fold=0).utcoffset()
        return local.fold == 1 and first != local.utcoffset() and self.wall_matches(wall)

    def walked_back_from_second_pass(self, fire: datetime) -> bool:
        """The start is in a second pass and cronsim, walking naive wall time, returned the
        first pass of a later wall time of the same repeated hour."""
        start = self.start.astimezone(self.zone)
        local = fire.astimezone(self.zone)
        return (
            self.reference_fixed_time()
            and start.fold == 1
            and local.fold == 0
            and local.replace(tzinfo=None) >= start.replace(tzinfo=None)
        )

    def plain_match(self, fire: datetime) -> bool:
        """``fire`` is a wall time that occurs once and that the reference's calendar matches."""
        wall = fire.astimezone(self.zone).replace(tzinfo=None, fold=0)
        once = wall.replace(tzinfo=self.zone).utcoffset() == (
            wall.replace(tzinfo=self.zone, fold=1).utcoffset()
        )
        return once and self.wall_matches(wall)

    def after_half_hour_shift(self, fire: datetime) -> bool:
        """A change of offset by a part of an hour happened in the day before ``fire``."""
        for change in transitions_near(self):
            if change <= fire < change + timedelta(days=1):
                before = (change - timedelta(seconds=1)).astimezone(self.zone).utcoffset()
                after = change.astimezone(self.zone).utcoffset()
                assert before is not None and after is not None
                return (after - before) % timedelta(hours=1) != timedelta(0)
        return False

    def classify_ours_only(self, fire: datetime) -> str | None:
        if self.gap_has_match(fire) and not self.reference_fixed_time():
            return GAP_END
        if self.second_pass_match(fire) and self.policy_interval() and self.reference_fixed_time():
            return SECOND_PASS_INTERVAL
        ours_by_policy = self.plain_match(fire) or (
            self.second_pass_match(fire) and self.policy_interval()
        )
        if ours_by_policy and self.after_half_hour_shift(fire):
            return HALF_HOUR_STEPPING
        return None

    def classify_reference_only(self, fire: datetime) -> str | None:
        fixed = not self.policy_interval() and not self.reference_fixed_time()
        if fixed and self.second_pass_match(fire):
            return SECOND_PASS_FIXED
        return None


def cases() -> Iterator[Case]:
    rng = random.Random(SEED)
    generator = Generator(rng)
    zones = {name: ZoneInfo(name) for name in ZONES}
    changes = {name: transitions(zones[name], years) for name, years in ZONES.items()}
    changes["UTC"] = changes["America/New_York"]  # start times only: UTC has no changes
    seen: set[str] = set()
    while len(seen) < EXPRESSIONS:
        expression = generator.expression()
        if expression in seen:
            continue
        seen.add(expression)
        for name, zone in zones.items():
            for change in rng.sample(changes[name], 2):
                offset = timedelta(seconds=rng.randint(-26 * 3600, 90 * 60))
                micro = rng.choice((0, 0, 0, rng.randint(1, 999_999)))
                yield Case(expression, zone, change + offset + timedelta(microseconds=micro))


def test_agrees_with_cronsim_except_documented_dst_policy() -> None:
    counts: Counter[str] = Counter()
    unexplained: list[str] = []
    expressions: set[str] = set()
    for case in cases():
        expressions.add(case.expression)
        try:
            schedule = CronSchedule.parse(case.expression, case.zone.key)
        except CronError as exc:
            ours_error: str | None = str(exc)
        else:
            ours_error = None
        try:
            reference = case.reference()
        except cronsim.CronSimError as exc:
            if ours_error is None:
                unexplained.append(f"{case}: only the reference refuses it ({exc})")
            counts["both refuse the expression"] += 1
            continue
        if ours_error is not None:
            if next(reference, None) is not None:
                unexplained.append(f"{case}: only we refuse it ({ours_error})")
            counts["both find no date for the expression"] += 1
            continue
        theirs = []
        for fire in itertools.islice(reference, FIRES):
            if fire.astimezone(UTC) > case.start:
                theirs.append(fire.astimezone(UTC))
            elif case.walked_back_from_second_pass(fire):
                counts[BEFORE_START] += 1
            else:
                unexplained.append(f"{case}: the reference returned {fire}")
        ours = schedule.fire_times(case.start, FIRES)
        counts["cases compared"] += 1
        counts["fire times compared"] += len(ours)
        if not ours or not theirs:
            if ours or theirs:
                unexplained.append(f"{case}: ours {ours[:2]} reference {theirs[:2]}")
            continue
        horizon = min(ours[-1], theirs[-1])
        mine = {fire for fire in ours if fire <= horizon}
        other = {fire for fire in theirs if fire <= horizon}
        if any(
            case.zone.key != "UTC" and abs(f - c) < timedelta(hours=3)
            for f in ours
            for c in transitions_near(case)
        ):
            counts["cases with a fire within 3 h of a DST change"] += 1
        for fire in sorted(mine - other):
            label = case.classify_ours_only(fire)
            if label is None:
                unexplained.append(f"{case}: only we fire at {fire}; ref {theirs}")
            counts[label or "unexplained"] += 1
        for fire in sorted(other - mine):
            label = case.classify_reference_only(fire)
            if label is None:
                unexplained.append(f"{case}: only the reference fires at {fire}")
            counts[label or "unexplained"] += 1
    print(f"\ncron conformance vs cronsim: {len(expressions)} expressions")
    for label, count in sorted(counts.items()):
        print(f"  {count:7d}  {label}")
    assert not unexplained, "\n".join(unexplained[:10])
    assert len(expressions) >= 2000
    assert counts["cases compared"] >= 18_000
    assert counts["cases with a fire within 3 h of a DST change"] >= 2_000


_TRANSITIONS: dict[str, list[datetime]] = {}


def transitions_near(case: Case) -> list[datetime]:
    key = case.zone.key
    if key not in _TRANSITIONS:
        years = ZONES.get(key, (2026,))
        _TRANSITIONS[key] = transitions(case.zone, (*years, years[-1] + 1))
    return _TRANSITIONS[key]


ODD_ZONES = (
    "America/Havana",  # changes at midnight: a whole day starts at 01:00
    "America/Santiago",  # changes at 24:00
    "Africa/Casablanca",  # DST suspended for Ramadan: four changes a year
    "Pacific/Chatham",  # +12:45 / +13:45
    "America/St_Johns",  # -03:30 / -02:30
    "Australia/Lord_Howe",  # 30-minute shift
    "Europe/London",
)


def test_dst_policy_by_brute_force_in_odd_zones() -> None:
    """Minute by minute, the documented policy picks the same fire times as CronSchedule.

    This checks the daylight-saving layer alone (day and time matching is compared with
    cronsim above): a matching wall time fires at each instant that shows it, except the
    second pass of a fixed-time schedule; a gap with a matching wall time fires at its end.
    """
    rng = random.Random(SEED)
    generator = Generator(rng)
    compared = 0
    for zone_name in ODD_ZONES:
        zone = ZoneInfo(zone_name)
        for change in transitions(zone, (2026,)):
            for _ in range(30):
                minute, hour = (
                    generator.plain(0, 59, (0, 30, 45)),
                    generator.plain(0, 23, (0, 1, 2)),
                )
                expression = f"{minute} {hour} * * *"
                start = change - timedelta(hours=rng.randint(2, 6), seconds=rng.randint(0, 59))
                case = Case(expression, zone, start)
                end = change + timedelta(hours=rng.randint(2, 6))
                ours = list(
                    CronSchedule.parse(expression, zone_name).fire_times_between(case.start, end)
                )
                assert ours == brute_force(case, end), (case, end)
                compared += 1
    print(f"\ncron DST policy, brute force: {compared} cases in {len(ODD_ZONES)} zones")
    assert compared >= 400


def brute_force(case: Case, end: datetime) -> list[datetime]:
    # Every day matches ("* * *"), so a wall time matches by its hour and minute alone.
    sim = cronsim.CronSim(case.expression, datetime(2000, 1, 1))
    interval = case.policy_interval()
    changes = set(transitions_near(case))
    fires = set()
    instant = case.start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while instant <= end:
        local = instant.astimezone(case.zone)
        wall = local.replace(tzinfo=None, fold=0)
        repeated = wall.replace(tzinfo=case.zone).utcoffset() != (
            wall.replace(tzinfo=case.zone, fold=1).utcoffset()
        )
        matches = wall.hour in sim.hours and wall.minute in sim.minutes
        if matches and (not repeated or local.fold == 0 or interval):
            fires.add(instant)
        if instant in changes and case.gap_has_match(instant):
            fires.add(instant)
        instant += timedelta(minutes=1)
    return sorted(fire for fire in fires if fire > case.start)
