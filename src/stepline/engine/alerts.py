"""Reporting a failed instance to the places its definition names (``alerts:``).

Alerts are sent from a daemon thread with each sender's own timeout: an alert that fails
or hangs is logged and never delays or fails the instance.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from stepline.core.definition import BatchDefinition, item_name
from stepline.core.states import StepStatus
from stepline.engine.advance import map_items
from stepline.errors import Problem
from stepline.notifiers import Alert, Notifier, notifier_from_config, notify_all
from stepline.stores.base import InstanceRecord, StepResultRecord, Store

log = structlog.get_logger("stepline.alerts")


class _AnyEnvironment(Mapping[str, str]):
    """Validation stand-in: every ``${NAME}`` resolves to one sample value, so only the
    shape is checked (see :func:`alert_problems`, which tries a URL, a number, a flag)."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __getitem__(self, key: str) -> str:
        return self.value

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0


_SAMPLES = ("https://placeholder.invalid/hook", "25", "true", "placeholder")


def alert_problems(definition: BatchDefinition, source: str | None = None) -> list[Problem]:
    """What is wrong with a definition's ``alerts:`` entries (the core only checks shape)."""
    problems = []
    for index, config in enumerate(definition.alerts):
        errors = []
        for sample in _SAMPLES:  # a ${VAR} may stand for a URL, a port, a flag, a name
            try:
                notifier_from_config(config, _AnyEnvironment(sample))
                break
            except ValueError as exc:
                errors.append(str(exc))
        else:
            problems.append(Problem(f"alerts[{index}]: {errors[0]}", source))
    return problems


def send_alerts(
    store: Store,
    instance: InstanceRecord,
    alerts: tuple[Mapping[str, Any], ...],
    *,
    wait: bool = False,
) -> threading.Thread | None:
    """Report a failed instance in the background; returns the thread (join it in tests)."""
    if not alerts:
        return None
    thread = threading.Thread(
        target=_send, args=(store, instance, alerts), name="stepline-alerts", daemon=True
    )
    thread.start()
    if wait:
        thread.join()
    return thread


def _send(store: Store, instance: InstanceRecord, alerts: tuple[Mapping[str, Any], ...]) -> None:
    bound = log.bind(batch=instance.batch, instance_id=instance.id)
    try:
        failed = [r for r in store.step_results(instance.id) if r.status is StepStatus.FAILED]
        first_error = next((r.error for r in failed if r.error), instance.error)
        alert = Alert(
            batch=instance.batch,
            instance_id=instance.id,
            status=instance.status.value,
            failed_steps=step_names(store, instance, failed),
            error=first_error.splitlines()[0] if first_error else None,
            inspect_hint=f"stepline show {instance.id}   (resume: stepline retry {instance.id})",
        )
        notifiers: list[Notifier] = []
        for config in alerts:
            try:
                notifiers.append(notifier_from_config(config))
            except ValueError as exc:
                bound.warning("alert not configured", problem=str(exc))
        notify_all(notifiers, alert, bound)
    except Exception as exc:  # the instance is final already; never let this escape
        bound.warning("alerting failed", error=f"{type(exc).__name__}: {exc}")


def step_names(
    store: Store, instance: InstanceRecord, rows: Sequence[StepResultRecord]
) -> tuple[str, ...]:
    """How users name these step results: ``check``, and a map item by its item,
    ``collect_weather[F002]`` (see MapSpec.item_label); positions if the list is gone."""
    labels: dict[str, list[str]] = {}
    if any(r.map_index >= 0 for r in rows):
        try:
            definition = store.definition(instance.batch, instance.definition_version).definition
            for key in {r.step_key for r in rows if r.map_index >= 0}:
                step = definition.step(key)
                assert step.map is not None
                results = store.results_for(instance.id, [step.map.over])
                items = map_items(step, instance.params, results)
                labels[key] = [
                    step.map.item_label(item, index, instance.params)
                    for index, item in enumerate(items)
                ]
        except Exception as exc:  # naming is a courtesy: positions are shown instead
            log.debug("item labels unavailable", instance_id=instance.id, error=repr(exc))
    names = []
    for r in rows:
        if r.map_index < 0:
            names.append(r.step_key)
            continue
        known = labels.get(r.step_key, [])
        label = known[r.map_index] if r.map_index < len(known) else str(r.map_index)
        names.append(item_name(r.step_key, label))
    return tuple(names)
