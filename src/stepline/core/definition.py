"""Batch definitions: frozen data, parsed from YAML/JSON documents or built in Python."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from stepline.core.dag import Graph
from stepline.core.states import TriggerRule

NAME_PATTERN = re.compile(r"^[a-z0-9_-]{1,200}$")
STEP_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
QUEUE_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


@dataclass(frozen=True)
class RetryPolicy:
    """How often a step is attempted and how long to wait between attempts."""

    attempts: int = 1
    backoff: timedelta = timedelta(seconds=1)
    max_backoff: timedelta = timedelta(minutes=5)
    jitter: bool = True

    def delay_before(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before ``attempt`` (2, 3, ...): exponential, capped, jittered.

        Jitter is "equal jitter": between half and all of the exponential delay, so
        retries of many failed items do not hit a recovering API in lockstep.
        """
        # The exponent is capped before it is computed: 2**2000 would overflow a float.
        base = self.backoff.total_seconds() * (2 ** min(max(attempt - 2, 0), 64))
        delay = min(base, self.max_backoff.total_seconds())
        if self.jitter:
            delay = delay / 2 + rng() * delay / 2
        return float(delay)

    def to_document(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "backoff": self.backoff.total_seconds(),
            "max_backoff": self.max_backoff.total_seconds(),
            "jitter": self.jitter,
        }


@dataclass(frozen=True)
class MapSpec:
    """Fan a step out over a list: an upstream step's result or a params key."""

    over: str
    concurrency: int = 16

    def to_document(self) -> dict[str, Any]:
        return {"over": self.over, "concurrency": self.concurrency}


@dataclass(frozen=True)
class StepDefinition:
    key: str
    runner: str
    next_steps: tuple[str, ...] = ()
    args: Mapping[str, Any] = field(default_factory=dict)
    retry: RetryPolicy = RetryPolicy()
    timeout: timedelta | None = None
    trigger_rule: TriggerRule = TriggerRule.ALL_SUCCESS
    condition: str | None = None
    map: MapSpec | None = None
    queue: str | None = None
    """Celery dispatcher: only workers listening to this queue run the step."""

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"key": self.key, "runner": self.runner}
        if self.next_steps:
            doc["next_steps"] = list(self.next_steps)
        if self.args:
            doc["with"] = dict(self.args)
        if self.retry != RetryPolicy():
            doc["retry"] = self.retry.to_document()
        if self.timeout is not None:
            doc["timeout"] = self.timeout.total_seconds()
        if self.trigger_rule is not TriggerRule.ALL_SUCCESS:
            doc["trigger_rule"] = self.trigger_rule.value
        if self.condition is not None:
            doc["condition"] = self.condition
        if self.map is not None:
            doc["map"] = self.map.to_document()
        if self.queue is not None:
            doc["queue"] = self.queue
        return doc


@dataclass(frozen=True)
class BatchDefinition:
    name: str
    steps: tuple[StepDefinition, ...]
    cron: str | None = None
    timezone: str | None = None
    max_active_instances: int = 1
    params: Mapping[str, Any] = field(default_factory=dict)
    alerts: tuple[Mapping[str, Any], ...] = ()
    description: str | None = None
    queue: str | None = None
    """The default queue of the batch's steps on the celery dispatcher."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Batch-level options owned by outer layers (scheduler misfire/overlap policy)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_key", {s.key: s for s in self.steps})
        object.__setattr__(self, "_graph", _graph_with_watchers(self.steps))

    @property
    def graph(self) -> Graph:
        graph: Graph = self.__dict__["_graph"]
        return graph

    def step(self, key: str) -> StepDefinition:
        by_key: dict[str, StepDefinition] = self.__dict__["_by_key"]
        return by_key[key]

    def queue_of(self, key: str) -> str | None:
        """The queue a step is sent to: its own, else the batch's, else None (the default)."""
        return self.step(key).queue or self.queue

    def to_document(self) -> dict[str, Any]:
        """The canonical document stored in ``batch_definition`` (round-trips through parse)."""
        doc: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            doc["description"] = self.description
        if self.cron is not None:
            doc["cron"] = self.cron
        if self.timezone is not None:
            doc["timezone"] = self.timezone
        doc["max_active_instances"] = self.max_active_instances
        if self.params:
            doc["params"] = dict(self.params)
        if self.alerts:
            doc["alerts"] = [dict(a) for a in self.alerts]
        if self.queue is not None:
            doc["queue"] = self.queue
        doc.update(self.extra)
        doc["steps"] = [s.to_document() for s in self.steps]
        return doc


_WATCHING = (TriggerRule.ONE_FAILED, TriggerRule.ALL_FAILED)


def _graph_with_watchers(steps: Sequence[StepDefinition]) -> Graph:
    """The DAG, where a failure handler that no step names watches the whole batch.

    A step with trigger_rule one_failed/all_failed that is not in any next_steps (the
    SPEC's ``alert_admin``) would otherwise be a root with nothing to watch. It waits for
    every other step except its own descendants and the other watchers, and its rule is
    applied to them: "runs when any upstream step failed".
    """
    explicit = Graph.from_edges([(s.key, s.next_steps) for s in steps])
    watchers = [
        s.key for s in steps if s.trigger_rule in _WATCHING and not explicit.predecessors.get(s.key)
    ]
    if not watchers:
        return explicit
    successors = {s.key: list(s.next_steps) for s in steps}
    for watcher in watchers:
        below = explicit.descendants(watcher)
        for s in steps:
            if s.key != watcher and s.key not in below and s.key not in watchers:
                successors[s.key].append(watcher)
    return Graph.from_edges([(s.key, successors[s.key]) for s in steps])


def step(
    key: str,
    runner: str | Callable[..., Any],
    next_steps: Sequence[str] = (),
    **options: Any,
) -> dict[str, Any]:
    """A step document for :func:`batch`; ``runner`` may be a module-level callable."""
    from stepline.core.runners import runner_reference

    ref = runner if isinstance(runner, str) else runner_reference(runner)
    return {"key": key, "runner": ref, "next_steps": list(next_steps), **options}


def batch(name: str, steps: Sequence[Mapping[str, Any]], **options: Any) -> BatchDefinition:
    """Build and validate a definition in Python, with the same rules as YAML files."""
    from stepline.core.loader import parse_definition

    return parse_definition({"name": name, "steps": list(steps), **options}, source="<python>")
