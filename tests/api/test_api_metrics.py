"""Metrics: one registry per app, step durations from orchestrator events, scheduler lag,
and instance counts that survive an unreachable database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
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


def event(status: StepStatus, seconds: float, key: str = "a", index: int = -1) -> StepEvent:
    return StepEvent(7, key, index, status, 1, T0 + timedelta(seconds=seconds))


def sample(metrics: Metrics, name: str, batch_name: str = "weekly") -> float | None:
    return metrics.registry.get_sample_value(name, {"batch": batch_name})


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Stepline]:
    with Stepline(db=f"sqlite:///{tmp_path / 'm.db'}") as made:
        yield made


def test_each_finished_attempt_is_observed_with_its_duration() -> None:
    metrics = Metrics()
    listener = StepMetrics(metrics, lambda instance_id: "weekly")
    listener(event(StepStatus.RUNNING, 0))
    listener(event(StepStatus.QUEUED, 1.5))  # failed, retried later: one attempt ended
    listener(event(StepStatus.RUNNING, 3))
    listener(event(StepStatus.SUCCEEDED, 5))
    listener(event(StepStatus.SKIPPED, 9, key="never_ran"))
    assert sample(metrics, DURATION_COUNT) == 2
    assert sample(metrics, DURATION_SUM) == pytest.approx(3.5)


def test_mapped_items_are_timed_each_and_forgotten_with_their_step() -> None:
    metrics = Metrics()
    listener = StepMetrics(metrics, lambda instance_id: "weekly")
    for index in range(3):
        listener(event(StepStatus.RUNNING, 0, index=index))
    listener(event(StepStatus.QUEUED, 2, index=1))
    listener(event(StepStatus.SUCCEEDED, 4))  # the mapped step as a whole
    listener(event(StepStatus.SUCCEEDED, 6, index=0))  # a late report changes nothing
    assert sample(metrics, DURATION_COUNT) == 1
    assert listener._starts == {}


def test_the_listener_never_raises_and_observes_once_the_batch_is_known() -> None:
    metrics = Metrics()
    known: dict[int, str] = {}

    def batch_of(instance_id: int) -> str:
        if instance_id not in known:
            raise ConnectionError("the database does not answer")
        return known[instance_id]

    listener = StepMetrics(metrics, batch_of)
    listener(event(StepStatus.RUNNING, 0))
    listener(event(StepStatus.FAILED, 2))
    assert sample(metrics, DURATION_COUNT) is None
    known[7] = "weekly"
    metrics.render()
    assert sample(metrics, DURATION_COUNT) == 1


def test_real_runs_are_timed_per_batch_from_the_watched_store(tmp_path: Path) -> None:
    metrics = Metrics()
    listener = StepMetrics(metrics)  # batch names read from the store create_app watches
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
        text = metrics.render()[0].decode()
    assert sample(metrics, DURATION_COUNT) == 2
    assert 'stepline_instances{batch="weekly",status="succeeded"} 1.0' in text


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
    assert "stepline_instances{" not in text


def test_a_vanished_instance_does_not_hold_up_the_others() -> None:
    metrics = Metrics()

    def batch_of(instance_id: int) -> str:
        if instance_id == 7:
            raise LookupError("instance 7 does not exist")
        return "weekly"

    listener = StepMetrics(metrics, batch_of)
    listener(event(StepStatus.RUNNING, 0))
    listener(event(StepStatus.SUCCEEDED, 1))
    listener(StepEvent(8, "a", -1, StepStatus.RUNNING, 1, T0))
    listener(StepEvent(8, "a", -1, StepStatus.SUCCEEDED, 1, T0 + timedelta(seconds=4)))
    assert sample(metrics, DURATION_COUNT) == 1
    assert sample(metrics, DURATION_SUM) == 4
