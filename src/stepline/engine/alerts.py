"""Reporting a failed instance to the places its definition names (``alerts:``).

Alerts are sent from a daemon thread with each sender's own timeout: an alert that fails
or hangs is logged and never delays or fails the instance.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import structlog

from stepline.core.definition import BatchDefinition
from stepline.core.states import StepStatus
from stepline.errors import Problem
from stepline.notifiers import Alert, Notifier, notifier_from_config, notify_all
from stepline.redact import redact_text, secret_values
from stepline.stores.base import InstanceRecord, Store

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
            failed_steps=tuple(
                r.step_key if r.map_index < 0 else f"{r.step_key}[{r.map_index}]" for r in failed
            ),
            error=redact_text(first_error.splitlines()[0], secret_values(instance.params))
            if first_error
            else None,
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
