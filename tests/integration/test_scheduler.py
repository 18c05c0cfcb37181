"""The scheduler on SQLite and PostgreSQL: misfire policies, leadership, exactly once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_engine import name, s

from stepline import InstanceStatus, batch
from stepline.scheduling.scheduler import LEASE, MisfirePolicy, Scheduler
from stepline.service import Stepline

T0 = datetime(2026, 11, 23, 0, 0, 30, tzinfo=UTC)  # a Monday, half a minute past


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def app(db_url_sqlite_pg: str) -> Iterator[Stepline]:
    with Stepline(db=db_url_sqlite_pg) as service:
        yield service


def every_minute(app: Stepline, **options: Any) -> str:
    batch_name = name()
    app.apply(batch(batch_name, [s("a")], cron="0 * * * * *", timezone="UTC", **options))
    return batch_name


def fire_times(app: Stepline, batch_name: str) -> list[datetime]:
    return sorted(
        i.scheduled_for
        for i in app.store.instances(batch_name, limit=1000)
        if i.scheduled_for is not None
    )


def scheduler(app: Stepline, clock: Clock, holder: str = "s1", lease: float = 30) -> Scheduler:
    return Scheduler(app, holder=holder, lease_seconds=lease, clock=clock)


def test_on_time_fires_create_one_instance_each(app: Stepline) -> None:
    batch_name = every_minute(app)
    clock = Clock(T0)
    sched = scheduler(app, clock)
    assert sched.tick() == 0  # first tick: starts from now, no backfill from nowhere
    for minute in range(1, 4):
        clock.now = T0 + timedelta(minutes=minute)
        assert sched.tick() == 1
    assert fire_times(app, batch_name) == [
        datetime(2026, 11, 23, 0, m, 0, tzinfo=UTC) for m in (1, 2, 3)
    ]
    assert all(i.trigger == "cron" for i in app.store.instances(batch_name))


@pytest.mark.parametrize(
    ("policy", "expected_minutes"),
    [
        ("once", [0, 10]),  # the latest missed time only
        ("all", [0, *range(1, 11)]),  # every missed time
        ("skip", [0]),  # none of them
    ],
)
def test_misfire_policies_after_downtime(
    app: Stepline, policy: str, expected_minutes: list[int]
) -> None:
    batch_name = every_minute(app, misfire=policy, misfire_grace="5s")
    clock = Clock(T0 - timedelta(minutes=1))
    first = scheduler(app, clock, holder="before")
    first.tick()
    clock.now = datetime(2026, 11, 23, 0, 0, 2, tzinfo=UTC)
    assert first.tick() == 1  # fires 00:00, on time
    app.store.release_lease(LEASE, "before")
    # Nobody scheduled for ten minutes; a new scheduler starts at 00:10:30.
    clock.now = T0 + timedelta(minutes=10)
    scheduler(app, clock, holder="after").tick()
    expected = [datetime(2026, 11, 23, 0, m, 0, tzinfo=UTC) for m in expected_minutes]
    assert fire_times(app, batch_name) == expected


def test_misfire_all_is_capped_to_the_most_recent(app: Stepline) -> None:
    batch_name = every_minute(app, misfire="all", misfire_grace="5s", misfire_cap=3)
    clock = Clock(T0)
    first = scheduler(app, clock, holder="before")
    first.tick()
    clock.now = T0 + timedelta(minutes=1)
    first.tick()
    app.store.release_lease(LEASE, "before")
    clock.now = T0 + timedelta(minutes=20)
    scheduler(app, clock, holder="after").tick()
    minutes = [f.minute for f in fire_times(app, batch_name)]
    assert minutes == [1, 18, 19, 20]


def test_fire_times_within_the_grace_window_are_not_misfires() -> None:
    policy = MisfirePolicy("skip", timedelta(seconds=60), 100)
    now = T0
    due = [now - timedelta(seconds=90), now - timedelta(seconds=30), now]
    assert policy.select(due, now) == (due[1:], due[:1])


def test_only_the_leader_fires_and_each_fire_time_has_one_instance(app: Stepline) -> None:
    batch_name = every_minute(app)
    clock = Clock(T0)
    schedulers = [scheduler(app, clock, holder=f"s{i}") for i in range(3)]
    for minute in range(0, 5):
        clock.now = T0 + timedelta(minutes=minute)
        for sched in schedulers:
            sched.tick()
    leaders = [sch for sch in schedulers if sch.epoch is not None]
    assert len(leaders) == 1
    assert fire_times(app, batch_name) == [
        datetime(2026, 11, 23, 0, m, 0, tzinfo=UTC) for m in range(1, 5)
    ]


def test_the_database_refuses_a_second_instance_for_a_fire_time(app: Stepline) -> None:
    batch_name = every_minute(app)
    fire = datetime(2026, 11, 23, 0, 1, tzinfo=UTC)
    first, created = app.trigger(batch_name, trigger="cron", scheduled_for=fire)
    again, created_again = app.trigger(batch_name, trigger="cron", scheduled_for=fire)
    assert created and not created_again and again.id == first.id
    assert len(app.store.instances(batch_name)) == 1


def test_a_new_leader_takes_over_after_the_lease_expires_and_fences_the_old(app: Stepline) -> None:
    batch_name = every_minute(app)
    clock = Clock(T0)
    old, new = scheduler(app, clock, "old", lease=0.5), scheduler(app, clock, "new", lease=0.5)
    old.tick()
    clock.now = T0 + timedelta(minutes=1)
    assert old.tick() == 1 and old.epoch == 1
    assert new.tick() == 0 and new.epoch is None
    time.sleep(0.7)  # the old leader stops renewing (it hangs, say); its lease runs out
    clock.now = T0 + timedelta(minutes=2)
    assert new.tick() == 1 and new.epoch == 2
    assert not app.store.lease_valid(LEASE, "old", 1)
    clock.now = T0 + timedelta(minutes=3)
    assert old.tick() == 0 and old.epoch is None  # it finds the lease taken and stands down
    assert [f.minute for f in fire_times(app, batch_name)] == [1, 2]


def test_the_scheduler_follows_a_new_cron_without_a_restart(app: Stepline) -> None:
    batch_name = every_minute(app)
    clock = Clock(T0)
    sched = scheduler(app, clock)
    sched.tick()
    app.apply(batch(batch_name, [s("a")], cron="0 */5 * * * *", timezone="UTC"))
    for minute in range(1, 11):
        clock.now = T0 + timedelta(minutes=minute)
        sched.tick()
    assert [f.minute for f in fire_times(app, batch_name)] == [5, 10]


def test_fall_back_night_interval_twice_fixed_time_once(app: Stepline) -> None:
    """America/New_York repeats 01:00-02:00 on 2026-11-01 (05:00-06:00 EDT, 06:00-07:00 EST)."""
    interval, fixed = name(), name()
    zone = "America/New_York"
    app.apply(batch(interval, [s("a")], cron="*/15 1-2 * * *", timezone=zone, misfire="all"))
    app.apply(batch(fixed, [s("a")], cron="30 1 * * *", timezone=zone, misfire="all"))
    start = datetime(2026, 11, 1, 4, 50, tzinfo=UTC)
    clock = Clock(start)
    sched = scheduler(app, clock)
    sched.tick()
    for step in range(1, 45):
        clock.now = start + timedelta(minutes=5 * step)
        sched.tick()
    quarter_hours = [
        datetime(2026, 11, 1, 5, tzinfo=UTC) + timedelta(minutes=15 * q) for q in range(12)
    ]
    assert fire_times(app, interval) == quarter_hours  # 01:00-01:45 EDT, again EST, 02:00-02:45
    assert fire_times(app, fixed) == [datetime(2026, 11, 1, 5, 30, tzinfo=UTC)]


def test_a_busy_batch_records_a_skipped_fire_with_on_busy_skip(app: Stepline) -> None:
    batch_name = every_minute(app, on_busy="skip")
    clock = Clock(T0)
    sched = scheduler(app, clock)
    sched.tick()
    clock.now = T0 + timedelta(minutes=1)
    sched.tick()  # creates a queued instance that nobody runs in this test
    clock.now = T0 + timedelta(minutes=2)
    sched.tick()
    instances = sorted(app.store.instances(batch_name), key=lambda i: i.id)
    assert [i.status for i in instances] == [InstanceStatus.QUEUED, InstanceStatus.CANCELLED]
    assert instances[1].error is not None and instances[1].error.startswith("skipped:")
    assert "max_active_instances" in instances[1].error
