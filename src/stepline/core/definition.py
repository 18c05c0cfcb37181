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
    on: tuple[str, ...] = ()
    """Which errors are transient: database codes (``ORA-00060``, SQLSTATE ``40P01``,
    MariaDB ``1213``) or exception class names (``TimeoutError``, ``OperationalError``).
    Empty: every error is retried. Otherwise an error matching none of them fails the step."""

    def retries(self, identifiers: Sequence[str]) -> bool:
        """Whether an error known by ``identifiers`` (its codes and class names) is transient.

        Codes and names compare case-insensitively; a policy without ``on`` retries all.
        """
        if not self.on:
            return True
        wanted = {o.upper() for o in self.on}
        return any(i.upper() in wanted for i in identifiers)

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
            **({"on": list(self.on)} if self.on else {}),
        }


@dataclass(frozen=True)
class MapSpec:
    """Fan a step out over a list: an upstream step's result or a params key."""

    over: str
    concurrency: int = 16
    label: str | None = None
    """A template naming an item in alerts, errors and progress, e.g. ``{{ item.farm_id }}``."""

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"over": self.over, "concurrency": self.concurrency}
        if self.label is not None:
            doc["label"] = self.label
        return doc

    def item_label(self, item: Any, index: int, params: Mapping[str, Any]) -> str:
        """How users name item ``index``: its ``label`` template rendered, else the item
        itself when it is a plain value (``F002``, ``42``), else its position."""
        if self.label is not None:
            from stepline.core.templates import TemplateError, resolve

            try:
                rendered = resolve(self.label, {"item": item, "params": params})
            except TemplateError:
                rendered = None
            if rendered is not None and rendered != "":
                return str(rendered)
        if isinstance(item, str | int | float) and not isinstance(item, bool) and item != "":
            return str(item)
        return str(index)


def item_name(step_key: str, label: str) -> str:
    """``collect_weather[F002]``: a mapped step's item as alerts, errors and progress show it."""
    return f"{step_key}[{label}]"


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
        object.__setattr__(self, "_mapped", any(s.map is not None for s in self.steps))

    @property
    def mapped(self) -> bool:
        """Whether any step is mapped over items (read on every decision: kept, not walked)."""
        mapped: bool = self.__dict__["_mapped"]
        return mapped

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
    """The DAG, where a handler that no step names watches the whole batch.

    A step with trigger_rule one_failed/all_failed that is not in any next_steps (the
    SPEC's ``alert_admin``) would otherwise be a root with nothing to watch. It waits for
    every other step except its own descendants and the other watchers, and its rule is
    applied to them: "runs when any upstream step failed".

    A step with trigger_rule all_done that no step names is a *final handler*: it waits for
    every other step, the failure watchers included, except its own descendants and the
    other final handlers and their descendants, and runs once they all ended, however
    (a job log of every step outcome, a cleanup). Failure watchers do not watch final
    handlers or their descendants, so the graph stays acyclic.
    """
    explicit = Graph.from_edges([(s.key, s.next_steps) for s in steps])
    if len(steps) < 2:
        return explicit
    unnamed = [s for s in steps if not explicit.predecessors.get(s.key)]
    watchers = [s.key for s in unnamed if s.trigger_rule in _WATCHING]
    finals = [s.key for s in unnamed if s.trigger_rule is TriggerRule.ALL_DONE]
    if not watchers and not finals:
        return explicit
    after = set(finals).union(*(explicit.descendants(k) for k in finals))
    successors = {s.key: list(s.next_steps) for s in steps}
    for watcher in watchers:
        below = explicit.descendants(watcher)
        for s in steps:
            if s.key == watcher or s.key in below or s.key in watchers or s.key in after:
                continue
            successors[s.key].append(watcher)
    for final in finals:
        below = explicit.descendants(final)
        others = set().union(*(explicit.descendants(k) | {k} for k in finals if k != final))
        for s in steps:
            if s.key != final and s.key not in below and s.key not in others:
                successors[s.key].append(final)
    return Graph.from_edges([(s.key, successors[s.key]) for s in steps])


def step(
    key: str,
    runner: str | Callable[..., Any],
    next_steps: Sequence[str] = (),
    *,
    with_: Mapping[str, Any] | None = None,
    args: Mapping[str, Any] | None = None,
    retry: int | Mapping[str, Any] | None = None,
    timeout: str | float | timedelta | None = None,
    trigger_rule: str | TriggerRule | None = None,
    condition: str | None = None,
    map: str | Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """A step document for :func:`batch`, with the keys of a YAML step.

    ``runner`` may be a module-level callable or a ``module:function`` string;
    ``with_`` (or its alias ``args``) is YAML's ``with``. Options left at ``None`` are
    omitted, so the loader's defaults apply. Validation happens in :func:`batch`.
    """
    from stepline.core.runners import runner_reference

    if with_ is not None and args is not None:
        raise TypeError(f"step {key!r}: give with_ or args, not both (they are the same key)")
    ref = runner if isinstance(runner, str) else runner_reference(runner)
    doc: dict[str, Any] = {"key": key, "runner": ref, "next_steps": list(next_steps)}
    given = with_ if with_ is not None else args
    if given is not None:
        doc["with"] = dict(given)
    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()
    if isinstance(trigger_rule, TriggerRule):
        trigger_rule = trigger_rule.value
    optional = {
        "retry": retry,
        "timeout": timeout,
        "trigger_rule": trigger_rule,
        "condition": condition,
        "map": map,
    }
    doc.update({k: v for k, v in optional.items() if v is not None})
    doc.update(options)
    return doc


def batch(
    name: str,
    steps: Sequence[Mapping[str, Any]],
    *,
    cron: str | None = None,
    timezone: str | None = None,
    params: Mapping[str, Any] | None = None,
    max_active_instances: int | None = None,
    on_busy: str | None = None,
    misfire: str | None = None,
    misfire_grace: str | float | None = None,
    misfire_cap: int | None = None,
    alerts: Sequence[Mapping[str, Any]] | None = None,
    description: str | None = None,
    **options: Any,
) -> BatchDefinition:
    """Build and validate a definition in Python, with the same keys and rules as YAML.

    Raises :class:`~stepline.errors.DefinitionError` listing every problem.
    """
    from stepline.core.loader import parse_definition

    optional: dict[str, Any] = {
        "cron": cron,
        "timezone": timezone,
        "params": None if params is None else dict(params),
        "max_active_instances": max_active_instances,
        "on_busy": on_busy,
        "misfire": misfire,
        "misfire_grace": misfire_grace,
        "misfire_cap": misfire_cap,
        "alerts": None if alerts is None else [dict(a) for a in alerts],
        "description": description,
    }
    doc: dict[str, Any] = {"name": name, "steps": list(steps)}
    doc.update({k: v for k, v in optional.items() if v is not None})
    doc.update(options)
    return parse_definition(doc, source="<python>")
