"""Stored records as API responses, with every secret masked (SPEC guarantee 7).

Redaction happens here, once, on the way out: responses carry definitions, params, step
results and error texts, any of which may hold a password or a URL with a token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from stepline.api.models import (
    BatchDetail,
    BatchSummary,
    InstanceDetail,
    InstanceOut,
    StepResultOut,
)
from stepline.redact import (
    MASK,
    only_references,
    redact_text,
    redact_url,
    redact_value,
    secret_values,
)
from stepline.stores.base import InstanceRecord, StepResultRecord, StoredDefinition

__all__ = [
    "batch_detail",
    "batch_summary",
    "instance_detail",
    "instance_out",
    "instance_secrets",
    "redact_document",
    "redact_value",
]


def _redact_alert(alert: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(alert)
    if isinstance(out.get("url"), str):
        out["url"] = redact_url(out["url"])
    # "${NAME}" is resolved from the server's environment when an alert is sent: it names a
    # secret without holding it, so it is shown as is (a GET -> PUT round trip keeps it).
    password = out.get("password")
    if isinstance(password, str) and not only_references(password):
        out["password"] = MASK
    headers = out.get("headers")
    if isinstance(headers, Mapping):
        # Headers of a webhook are how it authenticates: masked unless they only refer.
        out["headers"] = {
            k: v if isinstance(v, str) and only_references(v) else MASK for k, v in headers.items()
        }
    return out


def redact_document(document: Mapping[str, Any], secrets: Sequence[str]) -> dict[str, Any]:
    """A definition document with alert credentials, the values of its secret params and
    every known secret masked."""
    out = dict(document)
    secrets = [*secrets, *secret_values(out.get("params") or {})]
    alerts = out.get("alerts")
    if isinstance(alerts, list):
        out["alerts"] = [_redact_alert(a) if isinstance(a, Mapping) else a for a in alerts]
    redacted: dict[str, Any] = redact_value(out, secrets)
    return redacted


def batch_summary(stored: StoredDefinition) -> BatchSummary:
    definition = stored.definition
    return BatchSummary(
        name=stored.name,
        version=stored.version,
        cron=definition.cron,
        timezone=definition.timezone,
        step_count=len(definition.steps),
        max_active_instances=definition.max_active_instances,
        updated_at=stored.updated_at,
    )


def batch_detail(stored: StoredDefinition, secrets: Sequence[str]) -> BatchDetail:
    return BatchDetail(
        name=stored.name,
        version=stored.version,
        document=redact_document(stored.definition.to_document(), secrets),
        created_at=stored.created_at,
        updated_at=stored.updated_at,
    )


def _redact_error(error: str | None, secrets: Sequence[str]) -> str | None:
    return None if error is None else redact_text(error, secrets)


def instance_secrets(instance: InstanceRecord, secrets: Sequence[str]) -> list[str]:
    """``secrets`` and the values of the instance's secret params (a runner may copy them
    anywhere: under another key of its result, into an error message)."""
    return [*secrets, *secret_values(instance.params)]


def _instance_fields(instance: InstanceRecord, secrets: Sequence[str]) -> dict[str, Any]:
    return {
        "id": instance.id,
        "batch": instance.batch,
        "definition_version": instance.definition_version,
        "status": instance.status,
        "params": redact_value(dict(instance.params), secrets),
        "trigger": instance.trigger,
        "scheduled_for": instance.scheduled_for,
        "created_at": instance.created_at,
        "started_at": instance.started_at,
        "finished_at": instance.finished_at,
        "error": _redact_error(instance.error, secrets),
        "cancel_requested": instance.cancel_requested,
    }


def instance_out(instance: InstanceRecord, secrets: Sequence[str]) -> InstanceOut:
    return InstanceOut(**_instance_fields(instance, instance_secrets(instance, secrets)))


def instance_detail(
    instance: InstanceRecord, steps: Iterable[StepResultRecord], secrets: Sequence[str]
) -> InstanceDetail:
    secrets = instance_secrets(instance, secrets)
    return InstanceDetail(
        **_instance_fields(instance, secrets),
        steps=[
            StepResultOut(
                key=r.step_key,
                map_index=r.map_index,
                status=r.status,
                attempt=r.attempt,
                result_payload=redact_value(r.result_payload, secrets),
                error=_redact_error(r.error, secrets),
                started_at=r.started_at,
                finished_at=r.finished_at,
            )
            for r in steps
        ],
    )
