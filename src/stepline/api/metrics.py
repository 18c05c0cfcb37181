"""Prometheus metrics of one Stepline process, served at ``GET /metrics``.

- ``stepline_instances{batch,status}`` (gauge): instances in the store, counted at scrape
  time, so it is right whichever process created or finished them;
- ``stepline_store_up`` (gauge): 1 if that count could be read, else 0;
- ``stepline_step_duration_seconds{batch}`` (histogram): each finished step attempt, fed by
  :class:`StepMetrics`, the orchestrator's listener;
- ``stepline_scheduler_lag_seconds`` (gauge): how late the scheduler created the instance of
  its latest cron fire time, set with :func:`observe_scheduler_lag`.

Every :class:`Metrics` owns its own registry (never prometheus-client's global one), so
several apps, in tests or in one process, do not clash.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from datetime import datetime

import sqlalchemy as sa
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from sqlalchemy.engine import Engine

from stepline.core.states import InstanceStatus, StepStatus
from stepline.engine.orchestrator import StepEvent
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
        return [_instances_family(), GaugeMetricFamily("stepline_store_up", _STORE_UP_HELP)]

    def collect(self) -> Iterable[Metric]:
        if self._engine is None:
            return []
        try:
            counts = _count_instances(self._engine)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("cannot count instances for /metrics", error=type(exc).__name__)
            return [GaugeMetricFamily("stepline_store_up", _STORE_UP_HELP, value=0)]
        family = _instances_family()
        for (batch, status), count in sorted(counts.items()):
            family.add_metric([batch, status], count)
        return [family, GaugeMetricFamily("stepline_store_up", _STORE_UP_HELP, value=1)]


_STORE_UP_HELP = "1 if Stepline's database answered the last scrape, else 0"


def _instances_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "stepline_instances",
        "Instances in the store by batch and status",
        labels=["batch", "status"],
    )


def _count_instances(engine: Engine) -> dict[tuple[str, str], int]:
    d, i = batch_definition, batch_instance
    query = (
        sa.select(d.c.name, i.c.status, sa.func.count(i.c.id))
        .select_from(d.outerjoin(i, i.c.definition_id == d.c.id))
        .group_by(d.c.name, i.c.status)
    )
    # The store opens SQLite transactions with BEGIN IMMEDIATE (a write lock) unless told
    # that this is a read: a scrape must never queue behind or block the driver's writes.
    with engine.connect() as conn:
        rows = conn.execution_options(stepline_read=True).execute(query).all()
    counts: dict[tuple[str, str], int] = {}
    for name, status, count in rows:
        for known in InstanceStatus:
            counts.setdefault((name, known.value), 0)
        if status is not None:
            counts[(name, status)] = int(count)
    return counts


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
            "Duration of finished step attempts (success, failure or cancellation)",
            ["batch"],
            buckets=DURATION_BUCKETS,
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
    """Orchestrator listener that observes each finished step attempt's duration.

    An event alone does not say when its attempt began, so the ``running`` events' times
    are kept by (instance, step, map index) until the attempt ends (any later event of
    that step: final, or ``queued`` again for a retry).

    Events do not name their batch either: ``batch_of`` maps an instance id to its batch
    name; by default :meth:`Metrics.batch_name` reads it from the store that ``create_app``
    had the metrics watch. It is asked once per instance and cached. A duration whose
    batch cannot be named yet (the app is not built, the database does not answer) waits
    in a bounded queue and is observed with the next event or scrape.

    It runs on the orchestrator's driver thread and never raises: a metric that cannot be
    recorded is dropped, the batch is not disturbed. At most ``max_tracked`` running steps
    and waiting durations are remembered (the oldest are forgotten), so attempts that never
    report back cannot grow memory without bound.
    """

    def __init__(
        self,
        metrics: Metrics,
        batch_of: Callable[[int], str | None] | None = None,
        *,
        max_tracked: int = 100_000,
    ) -> None:
        self._histogram = metrics.step_duration
        self._batch_of = batch_of or metrics.batch_name
        self._max_tracked = max_tracked
        self._starts: OrderedDict[tuple[int, str], dict[int, datetime]] = OrderedDict()
        self._batches: OrderedDict[int, str] = OrderedDict()
        self._waiting: deque[tuple[int, float]] = deque(maxlen=max_tracked)
        self._lock = threading.Lock()
        metrics.before_scrape(self.flush)

    def __call__(self, event: StepEvent) -> None:
        try:
            self._record(event)
            self.flush()
        except Exception as exc:
            log.debug("step metric dropped", instance_id=event.instance_id, error=repr(exc))

    def _record(self, event: StepEvent) -> None:
        step = (event.instance_id, event.step_key)
        with self._lock:
            if event.status is StepStatus.RUNNING:
                self._starts.setdefault(step, {})[event.map_index] = event.at
                self._starts.move_to_end(step)
                while len(self._starts) > self._max_tracked:
                    self._starts.popitem(last=False)
                return
            items = self._starts.get(step)
            started = items.pop(event.map_index, None) if items is not None else None
            # A mapped step finishes as a whole (map index -1): its items are done too.
            if items is not None and (not items or (event.map_index < 0 and event.status.is_final)):
                del self._starts[step]
            if started is not None:
                seconds = max(0.0, (event.at - started).total_seconds())
                self._waiting.append((event.instance_id, seconds))

    def flush(self) -> None:
        """Observe every waiting duration whose batch can be named now (never raises).

        Called from the driver thread and from scrapes at once: only the caller that takes
        a duration off the queue observes it.
        """
        while True:
            with self._lock:
                if not self._waiting:
                    return
                head = self._waiting[0]
            try:
                batch = self._batch(head[0])
            except LookupError:
                batch = None  # no such instance (any more): its duration is dropped
            except Exception as exc:
                log.debug("batch unknown for now", instance_id=head[0], error=repr(exc))
                return
            else:
                if batch is None:
                    return
            with self._lock:
                taken = bool(self._waiting) and self._waiting[0] == head
                if taken:
                    self._waiting.popleft()
            if taken and batch is not None:
                self._histogram.labels(batch=batch).observe(head[1])

    def _batch(self, instance_id: int) -> str | None:
        with self._lock:
            name = self._batches.get(instance_id)
        if name is None:
            name = self._batch_of(instance_id)
            if name is None:
                return None
            with self._lock:
                self._batches[instance_id] = name
                while len(self._batches) > 10_000:
                    self._batches.popitem(last=False)
        return name
