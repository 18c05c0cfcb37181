"""Prometheus metrics of one Stepline process, served at ``GET /metrics``.

- ``stepline_instances_current{batch,status}`` (gauge): instances in the store, counted at
  scrape time, so it is right whichever process created or finished them;
- ``stepline_batch_last_success_timestamp_seconds{batch}`` (gauge): when the latest
  succeeded instance finished, from the store (alert on "no success for a day");
- ``stepline_store_up`` (gauge): 1 if those could be read, else 0;
- ``stepline_instances_total{batch,status}`` (counter): instances this process drove to a
  final status;
- ``stepline_step_attempts_total{batch,step,status}`` (counter) and
  ``stepline_step_duration_seconds{batch,step}`` (histogram): every finished step attempt,
  mapped items included, fed by :class:`StepMetrics`, the orchestrator's listener;
- ``stepline_scheduler_lag_seconds`` (gauge): how late the scheduler created the instance of
  its latest cron fire time, set with :func:`observe_scheduler_lag`.

Every :class:`Metrics` owns its own registry (never prometheus-client's global one), so
several apps, in tests or in one process, do not clash.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from datetime import datetime

import sqlalchemy as sa
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from sqlalchemy.engine import Engine

from stepline.core.states import InstanceStatus, StepStatus
from stepline.engine.orchestrator import InstanceEvent, StepEvent
from stepline.stores.schema import batch_definition, batch_instance

__all__ = ["InstanceCollector", "Metrics", "StepMetrics", "observe_scheduler_lag"]

log = structlog.get_logger("stepline.api.metrics")

# Steps run from milliseconds (a check) to hours (a report procedure).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 21600)

_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()


class InstanceCollector:
    """Counts instances per batch and status from the store at each scrape.

    Every (batch, status) pair is reported, zeros included, so a series does not vanish
    when its last instance changes status. A database that does not answer makes the
    scrape report ``stepline_store_up 0`` and no instance counts, instead of failing.
    """

    def __init__(self) -> None:
        self._engine: Engine | None = None

    def watch(self, engine: Engine) -> None:
        """Count from this engine's database from now on."""
        self._engine = engine

    def describe(self) -> Iterable[Metric]:
        return [
            _instances_family(),
            _last_success_family(),
            GaugeMetricFamily("stepline_store_up", _STORE_UP_HELP),
        ]

    def collect(self) -> Iterable[Metric]:
        if self._engine is None:
            return []
        try:
            counts, successes = _count_instances(self._engine)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("cannot count instances for /metrics", error=type(exc).__name__)
            return [GaugeMetricFamily("stepline_store_up", _STORE_UP_HELP, value=0)]
        family = _instances_family()
        for (batch, status), count in sorted(counts.items()):
            family.add_metric([batch, status], count)
        last = _last_success_family()
        for batch, when in sorted(successes.items()):
            last.add_metric([batch], when.timestamp())
        return [family, last, GaugeMetricFamily("stepline_store_up", _STORE_UP_HELP, value=1)]


_STORE_UP_HELP = "1 if Stepline's database answered the last scrape, else 0"


def _instances_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "stepline_instances_current",
        "Instances in the store by batch and status, counted at scrape time",
        labels=["batch", "status"],
    )


def _last_success_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "stepline_batch_last_success_timestamp_seconds",
        "When the batch's latest succeeded instance finished (Unix time), from the store",
        labels=["batch"],
    )


def _count_instances(
    engine: Engine,
) -> tuple[dict[tuple[str, str], int], dict[str, datetime]]:
    d, i = batch_definition, batch_instance
    query = (
        sa.select(d.c.name, i.c.status, sa.func.count(i.c.id))
        .select_from(d.outerjoin(i, i.c.definition_id == d.c.id))
        .group_by(d.c.name, i.c.status)
    )
    # The store opens SQLite transactions with BEGIN IMMEDIATE (a write lock) unless told
    # that this is a read: a scrape must never queue behind or block the driver's writes.
    last = (
        sa.select(d.c.name, sa.func.max(i.c.finished_at))
        .join(i, i.c.definition_id == d.c.id)
        .where(i.c.status == InstanceStatus.SUCCEEDED.value)
        .group_by(d.c.name)
    )
    with engine.connect() as conn:
        conn = conn.execution_options(stepline_read=True)
        rows = conn.execute(query).all()
        successes = {name: when for name, when in conn.execute(last).all() if when is not None}
    counts: dict[tuple[str, str], int] = {}
    for name, status, count in rows:
        for known in InstanceStatus:
            counts.setdefault((name, known.value), 0)
        if status is not None:
            counts[(name, status)] = int(count)
    return counts, successes


class Metrics:
    """The metrics of one process: a registry of its own, the step-duration histogram, the
    scheduler-lag gauge and the instance collector, which reads the store once
    :meth:`watch` names its engine (``create_app`` does that).

    Make one per process and give it to ``create_app``, :class:`StepMetrics` and the
    scheduler (through :func:`observe_scheduler_lag`).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.step_duration = Histogram(
            "stepline_step_duration_seconds",
            "Duration of finished step attempts, mapped items included",
            ["batch", "step"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.step_attempts = Counter(
            "stepline_step_attempts",
            "Finished step attempts (mapped items included) by outcome",
            ["batch", "step", "status"],
            registry=self.registry,
        )
        self.instances_total = Counter(
            "stepline_instances",
            "Instances this process drove to a final status",
            ["batch", "status"],
            registry=self.registry,
        )
        self.scheduler_lag = Gauge(
            "stepline_scheduler_lag_seconds",
            "How long after its cron fire time the scheduler created the latest instance",
            registry=self.registry,
        )
        self.instances = InstanceCollector()
        self.registry.register(self.instances)
        self._engine: Engine | None = None
        self._hooks: list[Callable[[], None]] = []
        _BY_REGISTRY[self.registry] = self

    def watch(self, engine: Engine) -> None:
        """Read from the database of ``engine`` (``service.store.engine``) from now on:
        instance counts and the batch names of :class:`StepMetrics`."""
        self._engine = engine
        self.instances.watch(engine)

    def batch_name(self, instance_id: int) -> str | None:
        """The batch of an instance, from the watched database; None before :meth:`watch`.

        Raises SQLAlchemyError when the database does not answer, LookupError when there
        is no such instance.
        """
        if self._engine is None:
            return None
        d, i = batch_definition, batch_instance
        query = (
            sa.select(d.c.name).join(i, i.c.definition_id == d.c.id).where(i.c.id == instance_id)
        )
        with self._engine.connect() as conn:
            name = conn.execution_options(stepline_read=True).execute(query).scalar()
        if name is None:
            raise LookupError(f"instance {instance_id} does not exist")
        return str(name)

    def before_scrape(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` before each :meth:`render` (never with a lock of ours held)."""
        self._hooks.append(hook)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and its content type."""
        for hook in list(self._hooks):
            hook()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def observe_scheduler_lag(target: Metrics | CollectorRegistry, seconds: float) -> None:
    """Set ``stepline_scheduler_lag_seconds``: called by the scheduler after each fire.

    ``target`` is a :class:`Metrics` or the registry of one. A negative lag (a clock
    ahead of the fire time) is reported as 0. Raises ValueError for a registry that no
    :class:`Metrics` owns.
    """
    metrics = target if isinstance(target, Metrics) else _BY_REGISTRY.get(target)
    if metrics is None:
        raise ValueError("this registry has no Stepline metrics: pass the Metrics that made it")
    metrics.scheduler_lag.set(max(0.0, float(seconds)))


class StepMetrics:
    """The orchestrator's listener that counts and times every finished step attempt.

    Each attempt that ends (succeeds, fails, times out, or fails and is queued for a retry;
    a mapped step's items each count) is reported by exactly one event that carries its
    batch and duration (see :class:`~stepline.engine.orchestrator.StepEvent`), so nothing is
    matched up or looked up here. It runs on the driver thread and never raises.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # The labelled children by (batch, step, status): ``labels(...)`` costs 3 µs a call,
        # paid twice for each item of a map of 10,000. The registry keeps the same children.
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    def __call__(self, event: StepEvent) -> None:
        if event.duration is None:
            return
        try:
            status = "succeeded" if event.status is StepStatus.SUCCEEDED else "failed"
            key = (event.batch, event.step_key, status)
            children = self._children.get(key)
            if children is None:
                m = self._metrics
                children = self._children[key] = (
                    m.step_attempts.labels(batch=event.batch, step=event.step_key, status=status),
                    m.step_duration.labels(batch=event.batch, step=event.step_key),
                )
            attempts, duration = children
            attempts.inc()
            duration.observe(event.duration)
        except Exception as exc:
            log.debug("step metric dropped", instance_id=event.instance_id, error=repr(exc))

    def instance_ended(self, event: InstanceEvent) -> None:
        try:
            self._metrics.instances_total.labels(batch=event.batch, status=event.status.value).inc()
        except Exception as exc:
            log.debug("instance metric dropped", instance_id=event.instance_id, error=repr(exc))
