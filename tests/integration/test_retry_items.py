"""Retrying only some failed items of a mapped step (``Stepline.retry(id, items=...)``),
on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_engine import name

import fixture_runners as fr
from stepline import Conflict, InstanceStatus, StepStatus, batch, step
from stepline.service import Stepline

W = "fixture_runners:"


@pytest.fixture
def app(db_url_sqlite_pg: str) -> Iterator[Stepline]:
    with Stepline(db=db_url_sqlite_pg) as service:
        yield service


def _mapped(app: Stepline) -> tuple[str, int]:
    batch_name = name()
    app.apply(
        batch(
            batch_name,
            [
                step("produce", W + "work", ["each"], **{"with": {"value": [0, 1, 2, 3, 4]}}),
                step(
                    "each",
                    W + "item_work",
                    ["after"],
                    map="produce",
                    **{"with": {"fail_items": [1, 3]}},
                ),
                step("after", W + "work"),
            ],
        )
    )
    instance, _ = app.trigger(batch_name)
    final = app.run_instance(instance.id)
    assert final.status is InstanceStatus.FAILED
    return batch_name, instance.id


def _items(app: Stepline, instance_id: int) -> dict[int, StepStatus]:
    return {
        r.map_index: r.status
        for r in app.store.step_results(instance_id)
        if r.step_key == "each" and r.map_index >= 0
    }


def test_only_the_chosen_failed_items_run_again(app: Stepline) -> None:
    batch_name, instance_id = _mapped(app)
    fr.healed.add(batch_name)
    app.retry(instance_id, {"each": [3]})
    final = app.run_instance(instance_id)
    # Item 1 was not chosen: still failed, so the step and the instance fail again.
    assert final.status is InstanceStatus.FAILED
    assert _items(app, instance_id) == {
        0: StepStatus.SUCCEEDED,
        1: StepStatus.FAILED,
        2: StepStatus.SUCCEEDED,
        3: StepStatus.SUCCEEDED,
        4: StepStatus.SUCCEEDED,
    }
    assert fr.calls[(batch_name, "each[3]")] == 2
    assert fr.calls[(batch_name, "each[1]")] == 1
    assert fr.calls[(batch_name, "each[0]")] == 1
    # Then the last one: everything succeeds, the downstream step runs.
    app.retry(instance_id, {"each": [1]})
    assert app.run_instance(instance_id).status is InstanceStatus.SUCCEEDED
    assert fr.calls[(batch_name, "each[1]")] == 2
    assert fr.calls[(batch_name, "after")] == 1


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ({"each": [2]}, "map_index 2 of step 'each' is not a failed item"),
        ({"each": [99]}, "map_index 99 of step 'each' is not a failed item"),
        ({"each": []}, "none given"),
        ({"after": [0]}, "step 'after' of instance .* is not a mapped step"),
        ({"nothing": [0]}, "step 'nothing' of instance .* is not a mapped step"),
    ],
)
def test_items_that_are_not_failed_items_are_refused(
    app: Stepline, items: dict[str, list[int]], message: str
) -> None:
    _batch, instance_id = _mapped(app)
    with pytest.raises(Conflict, match=message):
        app.retry(instance_id, items)
    assert app.store.instance(instance_id).status is InstanceStatus.FAILED
