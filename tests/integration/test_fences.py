"""Each fence of the store, tested where it lives, so that removing its one line fails here.

End-to-end tests alone let a fence rot while another layer hides it: the driver also
matches reports to its in-flight attempts, and the unique ``(definition_id,
scheduled_for)`` also stops duplicate fire times. These tests call the store (and the
scheduler) directly, on every database.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

import fixture_runners as fr
from stepline import InstanceStatus, StepStatus, batch
from stepline.scheduling.scheduler import LEASE, Scheduler
from stepline.service import Stepline
from stepline.stores.base import ClaimedStep, InstanceRecord, StepOutcome, Store, StoredDefinition

W = "fixture_runners:"


@pytest.fixture
def app(db_url: str) -> Iterator[Stepline]:
    with Stepline(db=db_url) as service:
        yield service


def _apply(app: Stepline, steps: list[dict[str, object]], **options: object) -> StoredDefinition:
    return app.store.apply(batch(f"f{uuid.uuid4().hex[:10]}", steps, **options))


def _step(key: str, *nexts: str) -> dict[str, object]:
    return {"key": key, "runner": W + "work", "next_steps": list(nexts)}


def _claim(store: Store, instance: InstanceRecord, owner: str) -> list[ClaimedStep]:
    """What the driver does to start steps: ready pending ones first, else queued ones."""
    now = datetime.now(UTC)
    with store.instance_transaction(instance.id) as tx:
        ready = tx.pending_ready()
        if ready:
            return tx.start(ready, 10, owner, now=now)
        return tx.claim(10, owner, now=now)


def _outcome(claimed: ClaimedStep, attempt: int, *, succeeded: bool) -> StepOutcome:
    now = datetime.now(UTC)
    return StepOutcome(
        row_id=claimed.row_id,
        step_key=claimed.step_key,
        map_index=-1,
        attempt=attempt,
        succeeded=succeeded,
        payload='"late"' if succeeded else None,
        error=None if succeeded else "RuntimeError: late",
        started_at=claimed.started_at,
        finished_at=now,
    )


# -- the SQL attempt fence ---------------------------------------------------------------------


def test_a_stale_attempts_report_returns_false_and_changes_nothing(app: Stepline) -> None:
    store = app.store
    instance, _ = store.create_instance(_apply(app, [_step("a")]), {}, "cli", owner="first")
    (first,) = _claim(store, instance, "first")
    assert first.attempt == 1
    # The first owner is presumed dead: its attempt is requeued and claimed again.
    with store.instance_transaction(instance.id) as tx:
        assert tx.requeue_running(exclude_owner="second") == ["a"]
    (second,) = _claim(store, instance, "second")
    assert (second.row_id, second.attempt) == (first.row_id, 2)
    before = (store.step_results(instance.id), store.attempts(instance.id))

    with store.instance_transaction(instance.id) as tx:
        late_success = tx.record(_outcome(first, 1, succeeded=True), retry_at=None, owner="first")
        late_failure = tx.record(_outcome(first, 1, succeeded=False), retry_at=None, owner="first")

    assert (late_success, late_failure) == (False, False)
    assert (store.step_results(instance.id), store.attempts(instance.id)) == before
    (row,) = store.step_results(instance.id)
    assert (row.status, row.attempt, row.result_payload) == (StepStatus.RUNNING, 2, None)

    with store.instance_transaction(instance.id) as tx:
        assert tx.record(_outcome(second, 2, succeeded=True), retry_at=None, owner="second")
    (row,) = store.step_results(instance.id)
    assert (row.status, row.attempt, row.result_payload) == (StepStatus.SUCCEEDED, 2, "late")


# -- the scheduler's per-fire lease check ------------------------------------------------------


class _Clock:
    """The scheduler's clock: fixed times, and a pause on the first reading of a tick, which
    comes right after the lease was acquired and before anything is fired."""

    def __init__(self, pause: float) -> None:
        self.now = datetime(2024, 6, 3, 0, 0, 30, tzinfo=UTC)
        self.pause = pause
        self.pause_next = False

    def __call__(self) -> datetime:
        if self.pause_next:
            self.pause_next = False
            time.sleep(self.pause)
        return self.now


@pytest.mark.parametrize("lease_lapses", [True, False])
def test_a_scheduler_whose_lease_lapses_before_firing_creates_nothing(
    app: Stepline, lease_lapses: bool
) -> None:
    stored = _apply(app, [_step("a")], cron="0 * * * * *")
    lease = 0.5
    clock = _Clock(pause=3 * lease if lease_lapses else 0)
    scheduler = Scheduler(app, holder="leader", lease_seconds=lease, clock=clock)
    assert scheduler.tick() == 0  # leads from now on; nothing is due yet

    clock.now += timedelta(minutes=2)  # 00:01:00 (missed) and 00:02:00 are due
    clock.pause_next = True
    created = scheduler.tick()

    instances = app.store.instances(stored.name)
    if lease_lapses:
        assert not app.store.lease_valid(LEASE, "leader", 1)
        assert (created, instances) == (0, [])
    else:
        assert created == 1
        assert [i.scheduled_for for i in instances] == [clock.now.replace(second=0)]


# -- admission at max_active_instances ----------------------------------------------------------


def test_admit_refuses_at_the_limit_and_admits_when_a_place_frees(app: Stepline) -> None:
    store = app.store
    stored = _apply(app, [_step("a")], max_active_instances=2)
    waiting = [store.create_instance(stored, {}, "http")[0] for _ in range(3)]

    admitted = [store.admit(i.id, f"owner-{n}", 2) for n, i in enumerate(waiting)]

    assert admitted == [True, True, False]
    third = store.instance(waiting[2].id)
    assert (third.status, third.owner_id) == (InstanceStatus.QUEUED, None)
    assert store.active_count(stored.id) == 3

    with store.instance_transaction(waiting[0].id) as tx:
        tx.set_instance(InstanceStatus.SUCCEEDED)
    assert store.admit(waiting[2].id, "owner-2", 2)
    assert store.instance(waiting[2].id).owner_id == "owner-2"


# -- crash and resume, in process -----------------------------------------------------------------


@pytest.mark.timeout(60)  # a broken requeue leaves b running forever: fail, do not hang
def test_an_instance_of_a_dead_owner_resumes_without_rerunning_what_succeeded(
    app: Stepline,
) -> None:
    """``a`` succeeded and ``b`` was running when the owner died (no live worker row)."""
    store = app.store
    stored = _apply(app, [_step("a", "b"), _step("b")])
    instance, _ = store.create_instance(stored, {}, "cli", owner="dead-owner")
    with store.instance_transaction(instance.id) as tx:
        tx.set_instance(InstanceStatus.RUNNING, owner="dead-owner")
    (a,) = _claim(store, instance, "dead-owner")
    with store.instance_transaction(instance.id) as tx:
        assert tx.record(_outcome(a, 1, succeeded=True), retry_at=None, owner="dead-owner")
        assert tx.upstream_done({"b": 1}) == ["b"]
        (b,) = tx.start(["b"], 10, "dead-owner", now=datetime.now(UTC))
    assert b.attempt == 1

    recovered = app.recover()

    assert [(i.id, i.status) for i in recovered] == [(instance.id, InstanceStatus.SUCCEEDED)]
    rows = {r.step_key: r for r in store.step_results(instance.id)}
    assert fr.calls[(stored.name, "a")] == 0
    assert (rows["a"].attempt, rows["a"].result_payload) == (1, "late")
    assert fr.calls[(stored.name, "b")] == 1
    assert (rows["b"].status, rows["b"].attempt) == (StepStatus.SUCCEEDED, 2)
    (lost,) = store.attempts(instance.id)
    assert (lost.step_key, lost.attempt, lost.status) == ("b", 1, StepStatus.FAILED)
    assert lost.error is not None and "lost: its owner dead-owner stopped" in lost.error
