"""Reporting a failed instance to the places its definition names (``alerts:``).

The transaction that fails an instance also writes one outbox row per alert; they are
sent after the commit from a daemon thread, with each sender's own timeout, so an alert
that fails or hangs never delays or fails the instance. A send that fails is tried again
later (by whichever process sweeps the outbox: ``serve``, ``recover``), and so is one
whose process died before sending it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import structlog

from stepline.core.definition import BatchDefinition
from stepline.core.states import StepStatus
from stepline.errors import Problem
from stepline.notifiers import Alert, notifier_from_config, notify_all
from stepline.redact import redact_text, secret_values
from stepline.stores.base import PendingAlert, Store

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


def deliver_alerts(
    store: Store, holder: str, claim_seconds: float, *, instance_id: int | None = None
) -> int:
    """Send the alerts due (of ``instance_id``, or of every instance) and record each
    send; returns how many went through. Alerts live in the store's outbox from the
    transaction that failed their instance, so whoever runs this next sends what a dead
    process could not."""
    sent = 0
    for pending in store.claim_alerts(holder, claim_seconds, instance_id=instance_id):
        error = _send(store, pending)
        store.alert_done(pending, holder, error)
        sent += error is None
    return sent


def deliver_in_background(
    store: Store, holder: str, claim_seconds: float, *, instance_id: int | None = None
) -> threading.Thread:
    """:func:`deliver_alerts` on a daemon thread (senders have their own timeouts)."""

    def deliver() -> None:
        try:
            deliver_alerts(store, holder, claim_seconds, instance_id=instance_id)
        except Exception as exc:  # left in the outbox: the next sweep sends it
            log.warning("alerts not sent yet", error=f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=deliver, name="stepline-alerts", daemon=True)
    thread.start()
    return thread


def _send(store: Store, pending: PendingAlert) -> str | None:
    """Send one alert; the reason it failed, or None."""
    instance = store.instance(pending.instance_id)
    bound = log.bind(batch=instance.batch, instance_id=instance.id)
    alerts = store.definition(instance.batch, instance.definition_version).definition.alerts
    if pending.alert_index >= len(alerts):
        return f"alert {pending.alert_index} is not in the definition of this instance"
    try:
        notifier = notifier_from_config(alerts[pending.alert_index])
    except ValueError as exc:
        bound.warning("alert not configured", problem=str(exc))
        return str(exc)
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
    errors = notify_all([notifier], alert, bound)
    return errors[0] if errors else None
