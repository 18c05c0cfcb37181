"""Guarantee 8, part two: a live process survives a transient database error anywhere.

A sweep over the statements of a whole run: for each statement (and commit) the engine
issues while two instances of a DAG run side by side — with a fan-in, a mapped step, a
retry and results read back — one fault is injected at the driver (tests/faults.py): the
connection killed, a deadlock, a statement timeout, or a commit whose answer is lost.
After each: both instances finish, nothing is left ``running``, every attempt that did not
end the step is in the history, and no runner ran more often than it had attempts.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from test_engine import s

import fixture_runners as fr
from faults import KINDS, Faults, install
from stepline import InstanceStatus, StepStatus, batch
from stepline.service import Stepline
from stepline.settings import Settings
from stepline.stores.sqlalchemy import SqlAlchemyStore

# CI strikes every statement of the run once, the kind of fault rotating from one statement
# to the next; STEPLINE_FAULT_CAMPAIGN=full strikes every statement with every kind.
FULL = os.environ.get("STEPLINE_FAULT_CAMPAIGN") == "full"


def _steps() -> list[dict[str, Any]]:
    return [
        s("a", ["b", "c"], value=1),
        s("b", ["d"], value=2),
        {**s("c", ["d"], runner="item_work"), "map": {"over": "farms", "concurrency": 2}},
        s("d", ["e"], runner="fan_in"),
        s("e", fail_times=1, retry={"attempts": 2, "backoff": "10ms", "jitter": False}),
    ]


@pytest.fixture
def faulty(db_url: str) -> Iterator[tuple[Stepline, Faults]]:
    faults = Faults()
    store = SqlAlchemyStore(db_url)
    install(store.engine, faults)
    settings = Settings(lease_seconds=30)
    with Stepline(settings, store=store) as app:
        yield app, faults


def _run_pair(app: Stepline, name: str, plan: dict[int, str], faults: Faults) -> list[int]:
    """Two instances of ``name`` driven together while ``plan``'s faults strike."""
    for key in [k for k in fr.calls if k[0] == name]:
        del fr.calls[key]
    fr.healed.discard(name)
    ids = [app.trigger(name, {"farms": [1, 2, 3]}, owned=True)[0].id for _ in range(2)]
    orchestrator = app.orchestrator
    faults.arm(plan)
    try:
        for instance_id in ids:
            # Admission and adoption are writes too: they meet the faults like the rest.
            app.run_instance(instance_id) if instance_id == ids[-1] else _admit(app, instance_id)
        for instance_id in ids:
            orchestrator.run(instance_id, timeout=60)
    finally:
        faults.disarm()
    return ids


def _admit(app: Stepline, instance_id: int) -> None:
    from stepline.errors import StoreUnavailable

    for _ in range(50):
        try:
            limit = app.store.definition_for(app.store.instance(instance_id)).max_active_instances
            app.store.admit(instance_id, app.orchestrator.owner, limit)
            app.orchestrator.adopt(instance_id)
            return
        except StoreUnavailable:
            continue
    raise AssertionError("the database never came back")


def _check(app: Stepline, name: str, ids: list[int], where: str) -> None:
    for instance_id in ids:
        final = app.store.instance(instance_id)
        assert final.status is InstanceStatus.SUCCEEDED, (where, final)
        rows = app.store.step_results(instance_id)
        history = app.store.attempts(instance_id)
        for row in rows:
            assert row.status is StepStatus.SUCCEEDED, (where, row)
            earlier = [
                a for a in history if (a.step_key, a.map_index) == (row.step_key, row.map_index)
            ]
            # Every attempt that did not end the step is kept: failed, or lost to a fault.
            if row.map_index >= 0 or row.step_key not in ("c",):
                assert len(earlier) == row.attempt - 1, (where, row, earlier)
        by_key = {(r.step_key, r.map_index): r for r in rows}
        assert by_key[("d", -1)].result_payload["seen"] == ["b", "c"], where
    # No runner ran more often than its step had attempts, across both instances.
    rows = [r for i in ids for r in app.store.step_results(i)]
    for key in ("a", "b", "d", "e"):
        attempts = sum(r.attempt for r in rows if r.step_key == key and r.map_index < 0)
        assert fr.calls[(name, key)] <= attempts, (where, key)
        assert fr.calls[(name, key)] >= len(ids), (where, key)
    items = sum(r.attempt for r in rows if r.step_key == "c" and r.map_index >= 0)
    assert len(ids) * 3 <= fr.calls[(name, "c")] <= items, where


def _campaign(faulty: tuple[Stepline, Faults], full: bool) -> None:
    app, faults = faulty
    name = f"faults_{uuid.uuid4().hex[:8]}"
    app.apply(batch(name, _steps(), max_active_instances=2, params={"farms": [1, 2, 3]}))
    # A clean run counts the statements: every one of them is a point to strike.
    ids = _run_pair(app, name, {}, faults)
    total = faults.count
    _check(app, name, ids, "no fault")
    assert total >= 100, f"only {total} statements to strike"
    if full:  # one fault a run, every kind at every statement
        plans = [{point: kind} for point in range(1, total + 1) for kind in KINDS]
    else:  # four faults a run, far apart, until at least 200 have struck
        stride = total // 4
        plans = [
            {base + j * stride: KINDS[(base + j + n // stride) % len(KINDS)] for j in range(4)}
            for n in range(-(-200 // 4) + 4)
            for base in [n % stride + 1]
        ]
    for plan in plans:
        before = len(faults.injected)
        ids = _run_pair(app, name, plan, faults)
        _check(app, name, ids, f"faults {faults.injected[before:]}")
    assert len(faults.injected) >= 200 or full, len(faults.injected)
    struck = {k for _, k, _ in faults.injected}
    assert struck == set(KINDS), struck
    print(
        f"\n{app.store.dialect}: {len(faults.injected)} faults struck in {len(plans)} runs "
        f"of {total} statements each"
    )


def test_every_statement_of_a_run_survives_a_fault(faulty: tuple[Stepline, Faults]) -> None:
    _campaign(faulty, full=False)


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="the full campaign: STEPLINE_FAULT_CAMPAIGN=full")
def test_every_statement_survives_every_kind_of_fault(faulty: tuple[Stepline, Faults]) -> None:
    _campaign(faulty, full=True)


def test_a_fault_as_a_retried_map_hands_its_items_over_loses_nothing(
    faulty: tuple[Stepline, Faults],
) -> None:
    """An instance retried in place (or taken over) reads its mapped step's list, a step's
    result, back from the store once the items it claimed are committed. A fault at any
    statement of the retry, that read included, must leave no item ``running`` under a live
    process for ever: the instance succeeds."""
    from stepline.errors import Conflict, StoreUnavailable

    app, faults = faulty
    name = f"faults_{uuid.uuid4().hex[:8]}"
    mapped = {**s("c", ["d"], runner="item_work", fail_items=[2]), "map": {"over": "a"}}
    app.apply(batch(name, [s("a", ["c"], value=[1, 2, 3]), mapped, s("d", runner="fan_in")]))

    def failed_once() -> int:
        fr.healed.discard(name)
        instance_id = app.trigger(name, owned=True)[0].id
        _admit(app, instance_id)
        assert app.orchestrator.run(instance_id, timeout=15).status is InstanceStatus.FAILED
        fr.healed.add(name)
        return instance_id

    def retried(instance_id: int, plan: dict[int, str]) -> None:
        faults.arm(plan)
        try:
            for n in range(50):
                try:
                    app.retry(instance_id)
                    break
                except StoreUnavailable:
                    continue
                except Conflict:  # the reset committed, but its answer was lost
                    assert n > 0
                    break
            _admit(app, instance_id)
            final = app.orchestrator.run(instance_id, timeout=15)
        finally:
            faults.disarm()
        assert final.status is InstanceStatus.SUCCEEDED, (plan, faults.injected[-1:], final)
        rows = app.store.step_results(instance_id)
        assert {r.status for r in rows} == {StepStatus.SUCCEEDED}, (plan, rows)

    retried(failed_once(), {})
    total = faults.count
    for point in range(1, total + 1):
        retried(failed_once(), {point: KINDS[point % len(KINDS)]})
    print(f"\n{app.store.dialect}: a fault at each of the {total} statements of a retry")
