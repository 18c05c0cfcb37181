"""Metrics: one registry per app, step durations from orchestrator events, scheduler lag,
and instance counts that survive an unreachable database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from stepline import StepStatus, batch, step
from stepline.api import Metrics, StepMetrics, create_app, observe_scheduler_lag
from stepline.engine.orchestrator import StepEvent
from stepline.service import Stepline

T0 = datetime(2026, 1, 5, 2, 0, tzinfo=UTC)
DURATION_COUNT = "stepline_step_duration_seconds_count"
DURATION_SUM = "stepline_step_duration_seconds_sum"
ATTEMPTS = "stepline_step_attempts_total"


def event(status: StepStatus, seconds: float | None, key: str = "a", index: int = -1) -> StepEvent:
    return StepEvent(7, key, index, status, 1, T0, "weekly", seconds)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"batch": "weekly", **labels})


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Stepline]:
    with Stepline(db=f"sqlite:///{tmp_path / 'm.db'}") as made:
        yield made


def test_each_finished_attempt_is_counted_and_timed_by_step() -> None:
    metrics = Metrics()
    listener = StepMetrics(metrics)
    listener(event(StepStatus.RUNNING, None))
    listener(event(StepStatus.QUEUED, 1.5))  # failed, retried later: one attempt ended
    listener(event(StepStatus.RUNNING, None))
    listener(event(StepStatus.SUCCEEDED, 2.0))
    listener(event(StepStatus.SKIPPED, None, key="never_ran"))
    assert sample(metrics, DURATION_COUNT, step="a") == 2
    assert sample(metrics, DURATION_SUM, step="a") == pytest.approx(3.5)
    assert sample(metrics, ATTEMPTS, step="a", status="failed") == 1
    assert sample(metrics, ATTEMPTS, step="a", status="succeeded") == 1
    assert sample(metrics, DURATION_COUNT, step="never_ran") is None


def test_a_mapped_step_counts_every_item_attempt(tmp_path: Path) -> None:
    """The soak test's shortfall: the last items of a map ended in the same transaction as
    the mapped step itself, and the step's final event made their ends uncountable."""
    metrics = Metrics()
    with Stepline(db=f"sqlite:///{tmp_path / 'map.db'}", listener=StepMetrics(metrics)) as service:
        service.apply(
            batch(
                "weekly",
                [
                    step(
                        "each",
                        "fixture_runners:item_work",
                        ["after"],
                        map={"over": "farms", "concurrency": 50},
                    ),
                    step("after", "fixture_runners:work"),
                ],
                params={"farms": list(range(50))},
            )
        )
        instance, _ = service.trigger("weekly")
        assert service.run_instance(instance.id).status.value == "succeeded"
        rows = len(service.store.step_results(instance.id))
    assert rows == 52
    assert sample(metrics, DURATION_COUNT, step="each") == 50
    assert sample(metrics, ATTEMPTS, step="each", status="succeeded") == 50
    assert sample(metrics, DURATION_COUNT, step="after") == 1


def test_real_runs_are_counted_per_batch_and_step(tmp_path: Path) -> None:
    metrics = Metrics()
    listener = StepMetrics(metrics)
    with Stepline(db=f"sqlite:///{tmp_path / 'r.db'}", listener=listener) as service:
        service.apply(
            batch(
                "weekly",
                [step("a", "fixture_runners:work", ["b"]), step("b", "fixture_runners:work")],
            )
        )
        instance, _ = service.trigger("weekly")
        create_app(service, metrics=metrics)
        assert service.run_instance(instance.id).status.value == "succeeded"
        finished = service.store.instance(instance.id).finished_at
        text = metrics.render()[0].decode()
    assert sample(metrics, DURATION_COUNT, step="a") == 1
    assert sample(metrics, DURATION_COUNT, step="b") == 1
    assert sample(metrics, "stepline_instances_total", status="succeeded") == 1
    assert 'stepline_instances_current{batch="weekly",status="succeeded"} 1.0' in text
    assert finished is not None
    assert sample(metrics, "stepline_batch_last_success_timestamp_seconds") == pytest.approx(
        finished.timestamp()
    )


def test_scheduler_lag_through_the_metrics_or_their_registry() -> None:
    metrics = Metrics()
    observe_scheduler_lag(metrics, 1.25)
    assert metrics.registry.get_sample_value("stepline_scheduler_lag_seconds") == 1.25
    observe_scheduler_lag(metrics.registry, -0.5)
    assert metrics.registry.get_sample_value("stepline_scheduler_lag_seconds") == 0
    with pytest.raises(ValueError, match="no Stepline metrics"):
        observe_scheduler_lag(CollectorRegistry(), 1.0)


def test_several_apps_in_one_process_have_their_own_registries(service: Stepline) -> None:
    first, second = create_app(service), create_app(service)
    assert first.state.metrics.registry is not second.state.metrics.registry
    observe_scheduler_lag(first.state.metrics, 3)
    assert second.state.metrics.registry.get_sample_value("stepline_scheduler_lag_seconds") == 0


def test_an_unreachable_database_reports_store_down_instead_of_failing(tmp_path: Path) -> None:
    metrics = Metrics()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}")
    metrics.watch(engine)
    text = metrics.render()[0].decode()
    engine.dispose()
    assert "stepline_store_up 0.0" in text
    assert "stepline_instances_current{" not in text
