"""Map items are named by their item, in the words of the batch: errors, alerts, progress.

``collect_weather[F002]`` (a ``map.label`` template, or the item itself when it is a plain
value) instead of ``collect_weather[1]``; progress counts items by state, not attempts.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from rich.console import Console

import fixture_runners as fr
from stepline import InstanceStatus, batch
from stepline.cli.progress import Progress
from stepline.engine.alerts import step_names
from stepline.service import Stepline

FARMS = [{"farm_id": f"F00{n}", "lat": 30 + n} for n in range(1, 6)]
FAILING = [FARMS[1], FARMS[3]]  # F002 and F004


class _Forward:
    target: Progress | None = None

    def __call__(self, event: Any) -> None:
        if self.target is not None:
            self.target(event)


@pytest.fixture
def forward() -> _Forward:
    return _Forward()


@pytest.fixture
def app(tmp_path: Path, forward: _Forward) -> Iterator[Stepline]:
    with Stepline(db=f"sqlite:///{tmp_path / 'stepline.db'}", listener=forward) as service:
        yield service


def _run(
    app: Stepline,
    items: list[Any],
    fail: list[Any],
    alerts: list[dict[str, Any]] | None = None,
    **map_options: Any,
) -> Any:
    steps = [
        {"key": "list_farms", "runner": "fixture_runners:work", "with": {"value": items},
         "next_steps": ["collect_weather"]},
        {"key": "collect_weather", "runner": "fixture_runners:item_work",
         "with": {"fail_items": fail}, "retry": {"attempts": 2, "backoff": "10ms"},
         "map": {"over": "list_farms", "concurrency": 2, **map_options}},
    ]  # fmt: skip
    stored = app.apply(batch(f"l{uuid.uuid4().hex[:10]}", steps, alerts=alerts or []))
    instance, _ = app.trigger(stored.name, owned=True)
    return app.run_instance(instance.id)


def _mapped_error(app: Stepline, instance_id: int) -> str:
    (row,) = [
        r
        for r in app.store.step_results(instance_id)
        if r.step_key == "collect_weather" and r.map_index < 0
    ]
    return row.error or ""


def test_a_label_template_names_the_failed_items(app: Stepline) -> None:
    final = _run(app, FARMS, FAILING, label="{{ item.farm_id }}")

    assert final.status is InstanceStatus.FAILED
    assert _mapped_error(app, final.id) == (
        "2 of 5 items failed: collect_weather[F002], collect_weather[F004]"
    )
    failed = [r for r in app.store.step_results(final.id) if r.status.value == "failed"]
    assert sorted(step_names(app.store, final, failed)) == [
        "collect_weather",
        "collect_weather[F002]",
        "collect_weather[F004]",
    ]


def test_a_scalar_item_names_itself_and_a_mapping_falls_back_to_its_position(
    app: Stepline,
) -> None:
    scalar = _run(app, ["F001", "F002", "F003"], ["F002"])
    mapping = _run(app, FARMS, FAILING)

    assert _mapped_error(app, scalar.id) == "1 of 3 items failed: collect_weather[F002]"
    assert _mapped_error(app, mapping.id) == (
        "2 of 5 items failed: collect_weather[1], collect_weather[3]"
    )


def test_an_alert_names_the_failed_items(app: Stepline, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    hook = [{"type": "webhook", "url": httpserver.url_for("/hook")}]

    final = _run(app, FARMS, FAILING, alerts=hook, label="farm {{ item.farm_id }}")

    assert final.status is InstanceStatus.FAILED
    deadline = time.monotonic() + 20
    while not httpserver.log and time.monotonic() < deadline:
        time.sleep(0.05)
    ((request, _),) = httpserver.log
    text = json.dumps(json.loads(request.data), ensure_ascii=False)
    assert "collect_weather[farm F002]" in text and "collect_weather[farm F004]" in text
    assert "collect_weather[1]" not in text


def test_progress_counts_items_by_state_not_attempts(app: Stepline, forward: _Forward) -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False, highlight=False)
    forward.target = Progress(console, ["list_farms", "collect_weather"])

    final = _run(app, FARMS, FAILING, label="{{ item.farm_id }}")
    forward.target.close()

    text = " ".join(out.getvalue().split())
    assert final.status is InstanceStatus.FAILED
    # Each failing farm ran twice (attempts: 2); items are still 5: 3 succeeded, 2 failed.
    assert fr.calls[(final.batch, "collect_weather")] == 5 + 2
    assert "collect_weather failed (5 items: 3 succeeded, 2 failed)" in text, text
    assert "collect_weather[F002] attempt 1 failed, will retry" in text, text
    assert "collect_weather[F004] failed (attempt 2)" in text, text
    assert "7 items" not in text and "4 failed" not in text, text


def test_every_item_event_carries_its_label_up_to_the_last_item(
    app: Stepline, forward: _Forward
) -> None:
    events: list[Any] = []
    forward.target = events.append  # type: ignore[assignment]

    final = _run(app, FARMS, [], label="{{ item.farm_id }}")

    assert final.status is InstanceStatus.SUCCEEDED
    items = [e for e in events if e.step_key == "collect_weather" and e.map_index >= 0]
    # Every item is claimed and ends; the last ones end in the transaction that ends the map.
    assert len(items) == 2 * len(FARMS)
    assert {(e.map_index, e.label) for e in items} == {
        (n, farm["farm_id"]) for n, farm in enumerate(FARMS)
    }
    ended = [e for e in events if e.step_key == "collect_weather" and e.map_index < 0]
    assert ended[-1].status.value == "succeeded"
