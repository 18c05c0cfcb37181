"""Schedule control and retention on every store: pause and resume, backfill, delete, purge."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa
from test_engine import name, s
from test_scheduler import Clock, fire_times, scheduler

from stepline import InstanceStatus, batch
from stepline.errors import Conflict, NotFound, Paused
from stepline.scheduling.backfill import BackfillError, backfill
from stepline.scheduling.scheduler import LEASE
from stepline.service import Stepline
from stepline.stores.base import PurgeFilter
from stepline.stores.schema import (
    batch_step_attempt,
    batch_step_log,
    batch_step_result,
    stepline_alert_outbox,
)

T0 = datetime(2026, 11, 23, 0, 0, 30, tzinfo=UTC)
FINAL = (InstanceStatus.SUCCEEDED, InstanceStatus.FAILED, InstanceStatus.CANCELLED)


@pytest.fixture
def app(db_url: str) -> Iterator[Stepline]:
    with Stepline(db=db_url) as service:
        yield service


def daily(app: Stepline, **options: object) -> str:
    batch_name = name()
    app.apply(
        batch(
            batch_name,
            [s("a")],
            cron="0 2 * * *",
            timezone="Asia/Seoul",
            params={"day": "{{ scheduled_date }}", "at": "{{ scheduled_for }}", "fixed": 1},
            **options,
        )
    )
    return batch_name


# -- pause and resume ------------------------------------------------------------------------


def test_a_paused_batch_refuses_triggers_until_resumed(app: Stepline) -> None:
    batch_name = daily(app)
    app.pause(batch_name)
    app.pause(batch_name)  # idempotent
    assert app.store.definition(batch_name).paused
    with pytest.raises(Paused, match="paused"):
        app.trigger(batch_name, {}, "http", limited=True)
    app.resume(batch_name)
    instance, created = app.trigger(batch_name, {}, "http", limited=True)
    assert created and instance.status is InstanceStatus.QUEUED
    with pytest.raises(NotFound):
        app.pause("no_such_batch")


@pytest.mark.parametrize(("policy", "expected"), [("once", [3]), ("all", [1, 2, 3]), ("skip", [])])
def test_cron_creates_nothing_while_paused_and_the_misfire_policy_decides_on_resume(
    db_url_sqlite_pg: str, policy: str, expected: list[int]
) -> None:
    with Stepline(db=db_url_sqlite_pg) as app:
        batch_name = name()
        app.apply(
            batch(batch_name, [s("a")], cron="0 * * * * *", misfire=policy, misfire_grace="5s")
        )
        clock = Clock(T0)
        sched = scheduler(app, clock)
        sched.tick()
        app.pause(batch_name)
        for minute in (1, 2, 3):
            clock.now = T0 + timedelta(minutes=minute)
            assert sched.tick() == 0
        assert fire_times(app, batch_name) == []
        app.resume(batch_name)
        sched.tick()
        assert fire_times(app, batch_name) == [
            datetime(2026, 11, 23, 0, m, 0, tzinfo=UTC) for m in expected
        ]


# -- backfill ----------------------------------------------------------------------------------


def test_backfill_creates_each_fire_time_once_with_its_params(app: Stepline) -> None:
    batch_name = daily(app)
    now = datetime(2026, 10, 8, 0, 0, tzinfo=UTC)
    dry = backfill(app, batch_name, date(2026, 10, 5), date(2026, 10, 7), dry_run=True, now=now)
    assert [e.state for e in dry] == ["would create"] * 3
    assert app.store.instances(batch_name) == []

    entries = backfill(app, batch_name, date(2026, 10, 5), date(2026, 10, 7), now=now)
    assert [e.state for e in entries] == ["created"] * 3
    # 02:00 in Seoul is 17:00 UTC the day before.
    assert [e.scheduled_for for e in entries] == [
        datetime(2026, 10, d, 17, 0, tzinfo=UTC) for d in (4, 5, 6)
    ]
    instances = sorted(app.store.instances(batch_name), key=lambda i: i.id)
    assert [i.params["day"] for i in instances] == ["2026-10-05", "2026-10-06", "2026-10-07"]
    assert instances[0].params["at"] == "2026-10-05T02:00:00+09:00"
    assert instances[0].params["fixed"] == 1
    assert all(i.trigger == "backfill" and i.status is InstanceStatus.QUEUED for i in instances)
    # oldest fire time first: admission goes by id
    assert [i.scheduled_for for i in instances] == [e.scheduled_for for e in entries]

    again = backfill(app, batch_name, date(2026, 10, 4), date(2026, 10, 7), now=now)
    assert [e.state for e in again] == ["created", "exists", "exists", "exists"]
    assert len(app.store.instances(batch_name)) == 4


def test_backfill_stops_at_now_and_refuses_bad_ranges(app: Stepline) -> None:
    batch_name = daily(app)
    now = datetime(2026, 10, 6, 3, 0, tzinfo=UTC)  # 12:00 in Seoul on the 6th
    entries = backfill(app, batch_name, date(2026, 10, 5), date(2026, 10, 30), now=now)
    assert len(entries) == 2  # the 5th and the 6th; later fire times are the scheduler's
    with pytest.raises(BackfillError, match="before --from"):
        backfill(app, batch_name, date(2026, 10, 7), date(2026, 10, 5), now=now)
    plain = name()
    app.apply(batch(plain, [s("a")]))
    with pytest.raises(BackfillError, match="no cron"):
        backfill(app, plain, date(2026, 10, 5), date(2026, 10, 6), now=now)
    app.pause(batch_name)
    with pytest.raises(Paused):
        backfill(app, batch_name, date(2026, 10, 1), date(2026, 10, 2), now=now)


def test_backfilled_instances_run_oldest_first_under_max_active(app: Stepline) -> None:
    batch_name = daily(app, max_active_instances=1)
    now = datetime(2026, 10, 8, 0, 0, tzinfo=UTC)
    backfill(app, batch_name, date(2026, 10, 5), date(2026, 10, 7), now=now)
    app._admit()
    running = app.store.instances(batch_name, InstanceStatus.RUNNING)
    assert [i.params["day"] for i in running] == ["2026-10-05"]  # one at a time, oldest first


# -- delete -----------------------------------------------------------------------------------


def test_delete_is_refused_while_instances_run_and_keeps_history(app: Stepline) -> None:
    batch_name = name()
    definition = batch(batch_name, [s("a")])
    app.apply(definition)
    instance, _ = app.trigger(batch_name)
    with pytest.raises(Conflict, match="queued or running"):
        app.delete(batch_name)
    app.run_instance(instance.id)
    assert app.delete(batch_name) == 0
    assert batch_name not in [d.name for d in app.store.definitions()]
    with pytest.raises(NotFound):
        app.trigger(batch_name)
    # its history stays readable
    assert app.store.instance(instance.id).status is InstanceStatus.SUCCEEDED
    assert app.store.step_results(instance.id)[0].status.value == "succeeded"
    # storing it again revives it
    app.apply(definition)
    assert app.trigger(batch_name)[1]


def test_delete_with_purge_removes_the_batch_and_its_history(app: Stepline) -> None:
    batch_name = daily(app)
    backfill(app, batch_name, date(2026, 10, 5), date(2026, 10, 5), now=T0)
    (instance,) = app.store.instances(batch_name)
    app.run_instance(instance.id)
    assert app.delete(batch_name, purge=True) == 1
    with pytest.raises(NotFound):
        app.store.instance(instance.id)
    with pytest.raises(NotFound):
        app.store.definition(batch_name)


# -- purge ------------------------------------------------------------------------------------


def _finish(app: Stepline, batch_name: str, count: int, **run: object) -> list[int]:
    ids = []
    for _ in range(count):
        instance, _ = app.trigger(batch_name, dict(run))
        app.run_instance(instance.id)
        ids.append(instance.id)
    return ids


def test_purge_deletes_finished_instances_with_everything_they_own(app: Stepline) -> None:
    batch_name = name()
    app.apply(batch(batch_name, [s("a", runner="chatty", fail=True, retry={"attempts": 2})]))
    other = name()
    app.apply(batch(other, [s("a")]))
    failed = _finish(app, batch_name, 3)
    kept = _finish(app, other, 2)
    unfinished, _ = app.trigger(batch_name)
    with app.store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(batch_step_log)).scalar() == 6
    everything = PurgeFilter(datetime.now(UTC) + timedelta(seconds=1), FINAL)
    assert app.store.count_purgeable(everything) == 5
    only_failed_of_batch = PurgeFilter(everything.before, (InstanceStatus.FAILED,), batch_name)
    assert app.purge(only_failed_of_batch, chunk=2) == 3  # in chunks of two
    for instance_id in failed:
        with pytest.raises(NotFound):
            app.store.instance(instance_id)
    assert {i.id for i in app.store.instances(other)} == set(kept)
    assert app.store.instance(unfinished.id).status is InstanceStatus.QUEUED
    with app.store.engine.connect() as conn:
        for table in (batch_step_log, batch_step_attempt):
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0
        rows = conn.execute(sa.select(sa.func.count()).select_from(batch_step_result)).scalar()
    assert rows == 3  # two kept instances and the unfinished one, one step each
    old = PurgeFilter(datetime.now(UTC) - timedelta(days=1), FINAL)
    assert app.purge(old) == 0  # nothing is that old


def test_purge_takes_the_alerts_of_failed_instances_along(app: Stepline) -> None:
    batch_name = name()
    app.apply(
        batch(
            batch_name,
            [s("a", fatal=True)],
            alerts=[{"type": "webhook", "url": "http://127.0.0.1:9/unreachable"}],
        )
    )
    (instance_id,) = _finish(app, batch_name, 1)
    assert app.store.instance(instance_id).status is InstanceStatus.FAILED
    with app.store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(stepline_alert_outbox)).scalar()
    assert app.purge(PurgeFilter(datetime.now(UTC) + timedelta(seconds=1), FINAL)) == 1
    with app.store.engine.connect() as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(stepline_alert_outbox))
        assert left.scalar() == 0


def test_a_purged_fire_time_never_gets_a_second_instance(app: Stepline) -> None:
    batch_name = daily(app)
    now = datetime(2026, 10, 8, 0, 0, tzinfo=UTC)
    backfill(app, batch_name, date(2026, 10, 5), date(2026, 10, 7), now=now)
    for instance in app.store.instances(batch_name):
        app.run_instance(instance.id)
    everything = PurgeFilter(datetime.now(UTC) + timedelta(seconds=1), FINAL)
    assert app.purge(everything) == 3
    again = backfill(app, batch_name, date(2026, 10, 5), date(2026, 10, 7), now=now)
    assert [e.state for e in again] == ["purged"] * 3
    assert app.store.instances(batch_name) == []
    stored = app.store.definition(batch_name)
    fire = datetime(2026, 10, 5, 17, 0, tzinfo=UTC)
    with pytest.raises(Conflict, match="purged"):
        app.trigger(batch_name, scheduled_for=fire)
    # the scheduler catches up from the latest fire time, purged or not
    assert app.store.last_scheduled(stored.id) == datetime(2026, 10, 6, 17, 0, tzinfo=UTC)


def test_the_scheduler_does_not_refire_after_everything_is_purged(db_url_sqlite_pg: str) -> None:
    with Stepline(db=db_url_sqlite_pg) as app:
        batch_name = name()
        app.apply(batch(batch_name, [s("a")], cron="0 * * * * *", misfire="all"))
        clock = Clock(T0)
        sched = scheduler(app, clock)
        sched.tick()
        clock.now = T0 + timedelta(minutes=2)
        assert sched.tick() == 2
        for instance in app.store.instances(batch_name):
            app.run_instance(instance.id)
        app.purge(PurgeFilter(datetime.now(UTC) + timedelta(seconds=1), FINAL))
        app.store.release_lease(LEASE, "s1")
        assert scheduler(app, clock, holder="s2").tick() == 0  # a new leader, no memory
        assert fire_times(app, batch_name) == []
