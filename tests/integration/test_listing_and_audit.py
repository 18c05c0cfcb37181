"""The store's operator queries on every database: filtered, paged instance listings and
the audit trail."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from stepline import InstanceStatus, StepStatus, batch, step
from stepline.service import Stepline
from stepline.stores.base import InstanceQuery


@pytest.fixture
def app(db_url: str) -> Iterator[Stepline]:
    with Stepline(db=db_url) as service:
        service.apply(batch("listed_a", [step("a", "fixture_runners:work")]))
        service.apply(batch("listed_b", [step("b", "fixture_runners:work")]))
        yield service


def test_pages_cover_every_instance_once_newest_first(app: Stepline) -> None:
    made = [app.trigger("listed_a" if n % 3 else "listed_b", {}, "http")[0].id for n in range(25)]
    seen: list[int] = []
    before = None
    while True:
        page = app.store.find_instances(InstanceQuery(before_id=before), 10)
        if not page:
            break
        seen.extend(i.id for i in page)
        before = page[-1].id
    assert seen == sorted(made, reverse=True)


def test_filters_by_batch_status_trigger_and_creation_time(app: Stepline) -> None:
    cli = app.trigger("listed_a", {}, "cli")[0]
    http = app.trigger("listed_b", {}, "http")[0]
    app.cancel(http.id)
    find = app.store.find_instances
    assert [i.id for i in find(InstanceQuery(batch="listed_a"), 10)] == [cli.id]
    assert [i.id for i in find(InstanceQuery(trigger="http"), 10)] == [http.id]
    assert [i.id for i in find(InstanceQuery(status=InstanceStatus.CANCELLED), 10)] == [http.id]
    now = datetime.now(UTC)
    assert len(find(InstanceQuery(created_from=now - timedelta(hours=1)), 10)) == 2
    assert find(InstanceQuery(created_from=now + timedelta(hours=1)), 10) == []
    assert find(InstanceQuery(created_to=now - timedelta(hours=1)), 10) == []
    assert find(InstanceQuery(batch="listed_a", trigger="http"), 10) == []


def test_audit_records_are_kept_per_instance_and_batch(app: Stepline) -> None:
    instance = app.trigger("listed_a", {}, "ui")[0]
    app.store.record_audit(
        "basic auth", "run", batch="listed_a", instance_id=instance.id, detail="params {}"
    )
    app.store.record_audit("api token", "cancel", batch="listed_a", instance_id=instance.id)
    app.store.record_audit("api token", "pause", batch="listed_b", detail="x" * 10_000)
    on_instance = app.store.audit(instance_id=instance.id)
    assert [(a.actor, a.action) for a in on_instance] == [
        ("api token", "cancel"),
        ("basic auth", "run"),
    ]
    assert on_instance[1].detail == "params {}" and on_instance[1].at <= datetime.now(UTC)
    paused = app.store.audit(batch="listed_b")
    assert [a.action for a in paused] == ["pause"]
    assert len(paused[0].detail or "") == 4000  # long details are cut


def test_step_overview_reads_the_first_and_the_failed_items_and_counts_the_rest(
    app: Stepline,
) -> None:
    app.apply(
        batch(
            "listed_map",
            [
                step(
                    "produce",
                    "fixture_runners:work",
                    ["each"],
                    **{"with": {"value": list(range(120))}},
                ),
                step(
                    "each",
                    "fixture_runners:item_work",
                    map="produce",
                    **{"with": {"fail_items": [3, 100, 110]}},
                ),
            ],
        )
    )
    instance = app.trigger("listed_map")[0]
    app.run_instance(instance.id)
    overview = app.store.step_overview(instance.id, first_items=50, failed_items=1)
    shown = sorted((r.step_key, r.map_index) for r in overview.rows)
    items = [i for key, i in shown if key == "each" and i >= 0]
    assert ("produce", -1) in shown and ("each", -1) in shown
    assert items == [*range(50), 100]  # the first 50, then one later failed item (limit 1)
    assert overview.item_counts == {"each": {StepStatus.SUCCEEDED: 117, StepStatus.FAILED: 3}}
